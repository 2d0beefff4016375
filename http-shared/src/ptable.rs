//! The process table's order and its keyset cursor, shared by the nodes (each selects, sorts
//! and pages its own processes) and the controller (which merges the nodes' sorted pages).
//! Rows are ordered by their sort value, then by pid (node, incarnation, serial); a
//! descending order reverses both, so every row has one place and a cursor (the place of the
//! last row shown) names where the next page starts without counting the rows before it.

use std::cmp::Ordering;

/// What the table sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// The pid alone.
    Pid,
    /// The local name ("" for none).
    Name,
    /// The app ("" for none).
    App,
    /// The node, then the pid: the pid order.
    Node,
    /// "server", "supervisor" or "function".
    Kind,
    /// Messages queued.
    Mailbox,
    /// Messages handled.
    Handled,
    /// Approximate bytes.
    Memory,
    /// The current function.
    Function,
    /// How long it has been stuck (0 when not).
    Stuck,
}

/// Every sort key by its name in the API.
pub const SORTS: &[(&str, Sort)] = &[
    ("pid", Sort::Pid),
    ("name", Sort::Name),
    ("app", Sort::App),
    ("node", Sort::Node),
    ("kind", Sort::Kind),
    ("mailbox", Sort::Mailbox),
    ("handled", Sort::Handled),
    ("memory", Sort::Memory),
    ("function", Sort::Function),
    ("stuck", Sort::Stuck),
];

impl Sort {
    /// The key named `name` in the API; "" is the pid.
    pub fn parse(name: &str) -> Option<Sort> {
        if name.is_empty() {
            return Some(Sort::Pid);
        }
        SORTS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    /// Its name in the API.
    pub fn name(self) -> &'static str {
        SORTS
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("pid", |(n, _)| n)
    }

    /// Whether its values are numbers (else text, or nothing for the pid orders).
    pub fn numeric(self) -> bool {
        matches!(
            self,
            Sort::Mailbox | Sort::Handled | Sort::Memory | Sort::Stuck
        )
    }

    /// Whether the pid alone orders rows.
    pub fn by_pid(self) -> bool {
        matches!(self, Sort::Pid | Sort::Node)
    }
}

/// A row's sort value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// The pid orders (no value of its own).
    Nothing,
    /// A numeric key.
    Number(u64),
    /// A text key.
    Text(String),
}

/// A row's place in the ascending order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    /// The sort value.
    pub value: Value,
    /// The pid's node.
    pub node: String,
    /// The pid's incarnation.
    pub incarnation: u64,
    /// The pid's serial.
    pub serial: u64,
}

impl Place {
    /// How the row with these parts compares with this place in the ascending order,
    /// without building a place for it (a node compares a million rows with a cursor).
    pub fn cmp_row(&self, value: &Value, node: &str, incarnation: u64, serial: u64) -> Ordering {
        value
            .cmp(&self.value)
            .then_with(|| node.cmp(self.node.as_str()))
            .then(incarnation.cmp(&self.incarnation))
            .then(serial.cmp(&self.serial))
    }

    /// Whether the row with these parts comes after this place in the order asked.
    pub fn before_row(
        &self,
        descending: bool,
        value: &Value,
        node: &str,
        incarnation: u64,
        serial: u64,
    ) -> bool {
        let o = self.cmp_row(value, node, incarnation, serial);
        if descending {
            o == Ordering::Less
        } else {
            o == Ordering::Greater
        }
    }
}

/// `a` against `b` in the order asked.
pub fn ordered(a: &Place, b: &Place, descending: bool) -> Ordering {
    if descending {
        b.cmp(a)
    } else {
        a.cmp(b)
    }
}

/// What a cursor begins with: its format's version.
const CURSOR_TAG: &str = "c1";

/// The opaque cursor naming `place` in the order of `sort` (ascending or not): URL-safe
/// text (letters, digits and dots).
pub fn encode_cursor(sort: Sort, descending: bool, place: &Place) -> String {
    let value = match &place.value {
        Value::Nothing => String::new(),
        Value::Number(n) => n.to_string(),
        Value::Text(t) => hex::encode(t.as_bytes()),
    };
    format!(
        "{CURSOR_TAG}.{}.{}.{value}.{}.{}.{}",
        sort.name(),
        if descending { "desc" } else { "asc" },
        hex::encode(place.node.as_bytes()),
        place.incarnation,
        place.serial
    )
}

/// The place a cursor names, checked to belong to the order asked (a cursor of another
/// order would start the page at a meaningless place).
pub fn decode_cursor(text: &str, sort: Sort, descending: bool) -> Result<Place, String> {
    let bad = || format!("cursor {text:?} is malformed; pass a next_cursor the API returned");
    let parts: Vec<&str> = text.split('.').collect();
    let [tag, s, order, value, node, incarnation, serial] = parts[..] else {
        return Err(bad());
    };
    if tag != CURSOR_TAG {
        return Err(bad());
    }
    let order_now = if descending { "desc" } else { "asc" };
    if s != sort.name() || order != order_now {
        return Err(format!(
            "the cursor belongs to sort={s}&order={order}, not sort={}&order={order_now}; \
             start from the first page after changing the order",
            sort.name()
        ));
    }
    let text_of = |h: &str| {
        hex::decode(h)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)
    };
    let value = if sort.by_pid() {
        Value::Nothing
    } else if sort.numeric() {
        Value::Number(value.parse().map_err(|_| bad())?)
    } else {
        Value::Text(text_of(value)?)
    };
    Ok(Place {
        value,
        node: text_of(node)?,
        incarnation: incarnation.parse().map_err(|_| bad())?,
        serial: serial.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(value: Value, serial: u64) -> Place {
        Place {
            value,
            node: "web.a".into(),
            incarnation: 3,
            serial,
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_another_order() {
        for (sort, value) in [
            (Sort::Pid, Value::Nothing),
            (Sort::Mailbox, Value::Number(42)),
            (Sort::Name, Value::Text("a.b c/é".into())),
        ] {
            let p = place(value, 7);
            let c = encode_cursor(sort, true, &p);
            assert!(c.chars().all(|x| x.is_ascii_alphanumeric() || x == '.'));
            assert_eq!(decode_cursor(&c, sort, true), Ok(p));
            assert!(decode_cursor(&c, sort, false).is_err());
        }
        assert!(decode_cursor("c1.pid.asc..zz.1.2", Sort::Pid, false).is_err());
        assert!(decode_cursor("nonsense", Sort::Pid, false).is_err());
    }

    #[test]
    fn rows_after_a_cursor_follow_the_order_asked() {
        let cursor = place(Value::Number(5), 10);
        assert!(cursor.before_row(false, &Value::Number(5), "web.a", 3, 11));
        assert!(!cursor.before_row(false, &Value::Number(5), "web.a", 3, 10));
        assert!(cursor.before_row(true, &Value::Number(4), "web.a", 3, 99));
        assert!(!cursor.before_row(true, &Value::Number(6), "web.a", 3, 1));
        let (a, b) = (place(Value::Number(1), 2), place(Value::Number(1), 3));
        assert_eq!(ordered(&a, &b, false), Ordering::Less);
        assert_eq!(ordered(&a, &b, true), Ordering::Greater);
    }
}
