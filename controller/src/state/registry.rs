//! Global names and process groups.

use super::{Ctx, Event, State};
use crate::error::Result;
use crate::types::{Outcome, Pid};

impl State {
    pub(super) fn register(&mut self, cx: &mut Ctx<'_>, name: String, pid: Pid) -> Result<Outcome> {
        if let Some(holder) = self.names.get(&name) {
            // Same pid again is a retry of an acknowledged registration: report success.
            return Ok(Outcome::Registered {
                registered: *holder == pid,
                holder: holder.clone(),
            });
        }
        self.check_live(&pid.node, pid.incarnation)?;
        self.names.insert(name.clone(), pid.clone());
        self.names_by_pid
            .entry(pid.clone())
            .or_default()
            .insert(name.clone());
        cx.events.push(Event::NameRegistered(name, pid.clone()));
        Ok(Outcome::Registered {
            registered: true,
            holder: pid,
        })
    }

    pub(super) fn unregister(
        &mut self,
        cx: &mut Ctx<'_>,
        name: &str,
        pid: Option<&Pid>,
    ) -> Outcome {
        let holder = match self.names.get(name) {
            Some(h) if pid.is_none_or(|p| p == h) => h.clone(),
            _ => return Outcome::Changed(false),
        };
        self.remove_name(cx, name, &holder);
        Outcome::Changed(true)
    }

    fn remove_name(&mut self, cx: &mut Ctx<'_>, name: &str, holder: &Pid) {
        self.names.remove(name);
        if let Some(set) = self.names_by_pid.get_mut(holder) {
            set.remove(name);
            if set.is_empty() {
                self.names_by_pid.remove(holder);
            }
        }
        cx.events
            .push(Event::NameReleased(name.to_string(), holder.clone()));
    }

    pub(super) fn pg_join(&mut self, cx: &mut Ctx<'_>, group: String, pid: Pid) -> Result<Outcome> {
        self.check_live(&pid.node, pid.incarnation)?;
        let added = self
            .groups
            .entry(group.clone())
            .or_default()
            .insert(pid.clone());
        if added {
            self.groups_by_pid
                .entry(pid.clone())
                .or_default()
                .insert(group.clone());
            cx.events.push(Event::PgJoined(group, pid));
        }
        Ok(Outcome::Changed(added))
    }

    pub(super) fn pg_leave(&mut self, cx: &mut Ctx<'_>, group: &str, pid: &Pid) -> Outcome {
        let removed = match self.groups.get_mut(group) {
            Some(members) => {
                let removed = members.remove(pid);
                if members.is_empty() {
                    self.groups.remove(group);
                }
                removed
            }
            None => false,
        };
        if removed {
            if let Some(set) = self.groups_by_pid.get_mut(pid) {
                set.remove(group);
                if set.is_empty() {
                    self.groups_by_pid.remove(pid);
                }
            }
            cx.events
                .push(Event::PgLeft(group.to_string(), pid.clone()));
        }
        Outcome::Changed(removed)
    }

    /// Releases every name and group membership of a pid (it exited or its node died).
    pub(super) fn release_pid(&mut self, cx: &mut Ctx<'_>, pid: &Pid) {
        if let Some(names) = self.names_by_pid.get(pid).cloned() {
            for name in names {
                self.remove_name(cx, &name, pid);
            }
        }
        if let Some(groups) = self.groups_by_pid.get(pid).cloned() {
            for group in groups {
                self.pg_leave(cx, &group, pid);
            }
        }
    }

    /// A process exited: release what it held and apply its top-level restart policy.
    pub(super) fn process_exited(&mut self, cx: &mut Ctx<'_>, pid: &Pid, reason: &str) {
        self.release_pid(cx, pid);
        self.top_level_exited(cx, pid, reason);
    }
}
