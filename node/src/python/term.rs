//! Message payloads: immutable values travel by reference, everything else as a pickle made
//! at send time, so a receiver never sees the sender's later mutations.

use super::objects::{Pid as PyPid, Ref as PyRef};
use crate::observe::trace::{Carried, MessageTrace};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyFrozenSet, PyInt, PyString, PyTuple};

/// A message payload as held in a mailbox, with the message's trace context when tracing is
/// on (see `observe::trace`) and its size for mailbox limits.
pub struct Term(Repr, usize);

// Four words: the payload and its size; the trace context must not grow every mailbox entry
// (the cast benchmark lost about 15% when it did), so it is boxed inside the payload.
const _: () = assert!(std::mem::size_of::<Term>() == 4 * std::mem::size_of::<usize>());

enum Repr {
    /// An immutable value, shared by reference.
    Shared(Py<PyAny>),
    /// A pickle (a Python `bytes`) made at send time.
    Pickled(Py<PyAny>),
    /// A pickle that arrived from another node; made into Python only by the receiver.
    Wire(Vec<u8>),
    /// A payload with the trace context of its message. Boxed, so that with tracing off a
    /// term stays three words (mailbox entries stay within a cache line).
    Traced(Box<(Repr, Carried)>),
}

/// A payload's size as `Term::footprint` reports it.
pub enum Footprint {
    /// Known bytes.
    Bytes(usize),
    /// A Python object still to measure.
    Object(Py<PyAny>),
}

/// Nesting depth beyond which a tuple is copied rather than checked element by element.
const MAX_SHARED_DEPTH: usize = 8;

fn pickle_fn<'py>(py: Python<'py>, name: &'static str) -> PyResult<&'py Bound<'py, PyAny>> {
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let cell = if name == "dumps" { &DUMPS } else { &LOADS };
    cell.import(py, "pickle", name)
}

/// Bytes counted for a scalar or a container's slot: about what CPython spends on a small
/// object, so a flood of small values is not counted as free.
const OBJECT_BYTES: usize = 32;

/// The size of an immutable value (shared by reference rather than copied), or `None`
/// when the value is mutable. Strings and bytes count their length; the estimate needs no
/// Python code to run, so it is taken while the value is checked.
fn immutable_size(value: &Bound<'_, PyAny>, depth: usize) -> Option<usize> {
    if value.is_exact_instance_of::<PyBytes>() || value.is_exact_instance_of::<PyString>() {
        return Some(OBJECT_BYTES + value.len().unwrap_or(0));
    }
    if value.is_none()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyBool>()
        || value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyPid>()
        || value.is_exact_instance_of::<PyRef>()
    {
        return Some(OBJECT_BYTES);
    }
    if depth >= MAX_SHARED_DEPTH {
        return None;
    }
    // Walked in place (no list of the items is made: this runs on every send).
    let mut size = OBJECT_BYTES;
    if let Ok(tuple) = value.cast_exact::<PyTuple>() {
        for item in tuple.iter_borrowed() {
            size += 8 + immutable_size(&item, depth + 1)?;
        }
    } else if let Ok(set) = value.cast_exact::<PyFrozenSet>() {
        for item in set.iter() {
            size += 8 + immutable_size(&item, depth + 1)?;
        }
    } else {
        return None;
    }
    Some(size)
}

impl crate::runtime::Payload for Term {
    fn bytes(&self) -> usize {
        self.1
    }
}

impl Repr {
    /// The payload itself, a trace context it carried dropped.
    fn untraced(self) -> Repr {
        match self {
            Repr::Traced(t) => t.0,
            other => other,
        }
    }
}

impl Term {
    /// Takes a value for sending: shared when immutable, else pickled now.
    pub fn copy_in(value: &Bound<'_, PyAny>) -> PyResult<Term> {
        if let Some(size) = immutable_size(value, 0) {
            return Ok(Term(Repr::Shared(value.clone().unbind()), size));
        }
        let py = value.py();
        match pickle_fn(py, "dumps")?.call1((value, 5)) {
            Ok(bytes) => {
                let size = bytes.len().unwrap_or(0);
                Ok(Term(Repr::Pickled(bytes.unbind()), size))
            }
            Err(cause) => {
                let type_name = value
                    .get_type()
                    .fully_qualified_name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into());
                let err = PyTypeError::new_err(format!(
                    "cannot send a value of type '{type_name}': it cannot be copied ({cause}); \
                     send plain data (numbers, strings, tuples, lists, dicts, dataclasses) instead"
                ));
                err.set_cause(py, Some(cause));
                Err(err)
            }
        }
    }

    /// Gives the receiver its own value.
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.payload() {
            Repr::Shared(obj) => Ok(obj.bind(py).clone()),
            Repr::Pickled(bytes) => pickle_fn(py, "loads")?.call1((bytes.bind(py),)),
            Repr::Wire(bytes) => Self::from_bytes(py, bytes),
            Repr::Traced(_) => unreachable!("payload() unwraps the trace"),
        }
    }

    /// A payload received from another node; needs no interpreter until it is read.
    pub fn from_wire(bytes: Vec<u8>) -> Term {
        let size = bytes.len();
        Term(Repr::Wire(bytes), size)
    }

    /// The same payload carrying `trace` (the context of the span it is sent in).
    pub fn traced(self, trace: MessageTrace) -> Term {
        match trace {
            None => self,
            Some(carried) => Term(
                Repr::Traced(Box::new((self.0.untraced(), *carried))),
                self.1,
            ),
        }
    }

    /// The trace context the message carries, if any.
    pub fn trace(&self) -> Option<&Carried> {
        match &self.0 {
            Repr::Traced(t) => Some(&t.1),
            _ => None,
        }
    }

    /// The payload without its trace context.
    fn payload(&self) -> &Repr {
        match &self.0 {
            Repr::Traced(t) => &t.0,
            other => other,
        }
    }

    /// The pickle to put on the wire to another node.
    pub fn to_wire(&self, py: Python<'_>) -> PyResult<Vec<u8>> {
        match self.payload() {
            Repr::Shared(obj) => {
                let mut out = Vec::with_capacity(64);
                if quick_pickle(obj.bind(py), &mut out) {
                    return Ok(out);
                }
                Self::to_bytes(obj.bind(py))
            }
            Repr::Pickled(bytes) => Ok(bytes.bind(py).cast::<PyBytes>()?.as_bytes().to_vec()),
            Repr::Wire(bytes) => Ok(bytes.clone()),
            Repr::Traced(_) => unreachable!("payload() unwraps the trace"),
        }
    }

    /// The pickle to put on the wire, taking the interpreter only if encoding needs it.
    pub fn encode(&self) -> PyResult<Vec<u8>> {
        match &self.0 {
            Repr::Wire(bytes) => Ok(bytes.clone()),
            _ => Python::attach(|py| self.to_wire(py)),
        }
    }

    /// How to size the payload for `rebeam ps`: a pickle's length is known at once; a value
    /// shared by reference is measured later (with `sys.getsizeof`, no lock held), because
    /// measuring may run Python code.
    pub fn footprint(&self, py: Python<'_>) -> Footprint {
        match self.payload() {
            Repr::Shared(obj) => Footprint::Object(obj.clone_ref(py)),
            // A bytes object's length is a field read: no code runs.
            Repr::Pickled(bytes) => Footprint::Bytes(bytes.bind(py).len().unwrap_or(0)),
            Repr::Wire(bytes) => Footprint::Bytes(bytes.len()),
            Repr::Traced(_) => unreachable!("payload() unwraps the trace"),
        }
    }

    /// The serialized form, for terms inside exit reasons.
    pub fn to_bytes(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        let bytes = pickle_fn(value.py(), "dumps")?.call1((value, 5))?;
        Ok(bytes.cast_into::<PyBytes>()?.as_bytes().to_vec())
    }

    /// Restores a value serialized by `to_bytes`.
    pub fn from_bytes<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        pickle_fn(py, "loads")?.call1((PyBytes::new(py, bytes),))
    }
}

/// Pickles the plain immutable values most messages are made of (None, booleans, ints that
/// fit 64 bits, floats, str, bytes and tuples of these) without calling `pickle.dumps`,
/// whose per-call setup (a new Pickler, its buffers, the bytes object) was a quarter of a
/// cross-node sender's time. The output is an ordinary protocol-4 pickle that `pickle.loads`
/// reads back as an equal value of the same types; only identity between equal parts of a
/// message is not kept (`pickle.dumps` keeps it through its memo), which immutable values
/// do not make observable except through `is`. False (with `out` cleared) for anything
/// else: the caller pickles it the ordinary way.
pub fn quick_pickle(value: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> bool {
    out.clear();
    out.extend_from_slice(&[0x80, 4]);
    if quick_pickle_into(value, out, 0) {
        out.push(b'.');
        true
    } else {
        out.clear();
        false
    }
}

fn quick_pickle_into(value: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> bool {
    if value.is_none() {
        out.push(b'N');
    } else if value.is_exact_instance_of::<PyBool>() {
        out.push(if value.is_truthy().unwrap_or(false) {
            0x88
        } else {
            0x89
        });
    } else if value.is_exact_instance_of::<PyInt>() {
        let Ok(n) = value.extract::<i64>() else {
            return false;
        };
        match n {
            0..=0xff => out.extend_from_slice(&[b'K', n as u8]),
            0x100..=0xffff => {
                out.push(b'M');
                out.extend_from_slice(&(n as u16).to_le_bytes());
            }
            _ if i32::try_from(n).is_ok() => {
                out.push(b'J');
                out.extend_from_slice(&(n as i32).to_le_bytes());
            }
            // LONG1: a little-endian two's complement of 8 bytes.
            _ => {
                out.extend_from_slice(&[0x8a, 8]);
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    } else if value.is_exact_instance_of::<PyFloat>() {
        let Ok(f) = value.extract::<f64>() else {
            return false;
        };
        out.push(b'G');
        out.extend_from_slice(&f.to_be_bytes());
    } else if let Ok(s) = value.cast_exact::<PyString>() {
        // A string with lone surrogates has no UTF-8 form: pickle handles it.
        let Ok(text) = s.to_str() else {
            return false;
        };
        return sized(out, text.as_bytes(), 0x8c, b'X');
    } else if let Ok(b) = value.cast_exact::<PyBytes>() {
        return sized(out, b.as_bytes(), b'C', b'B');
    } else if let Ok(tuple) = value.cast_exact::<PyTuple>() {
        if depth >= MAX_SHARED_DEPTH {
            return false;
        }
        let n = tuple.len();
        if n > 3 {
            out.push(b'(');
        }
        for item in tuple.iter() {
            if !quick_pickle_into(&item, out, depth + 1) {
                return false;
            }
        }
        match n {
            0 => out.push(b')'),
            1 => out.push(0x85),
            2 => out.push(0x86),
            3 => out.push(0x87),
            _ => out.push(b't'),
        }
    } else {
        return false;
    }
    true
}

/// A str or bytes body: the short opcode with a one-byte length, else the long one with
/// four; false when it is too long for that.
fn sized(out: &mut Vec<u8>, body: &[u8], short: u8, long: u8) -> bool {
    if let Ok(len) = u8::try_from(body.len()) {
        out.extend_from_slice(&[short, len]);
    } else if let Ok(len) = u32::try_from(body.len()) {
        out.push(long);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        return false;
    }
    out.extend_from_slice(body);
    true
}
