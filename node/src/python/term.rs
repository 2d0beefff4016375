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

// A mailbox entry is a term and its kind (which fits in the term's spare bits): what else a
// call or a signal carries lives behind a pointer. Casts queue tens of thousands of entries
// between two turns of the interpreter, and those cost by their size.
const _: () = assert!(
    std::mem::size_of::<crate::runtime::Envelope<Term>>() == 5 * std::mem::size_of::<usize>()
);

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
/// Python code to run, so it is taken while the value is checked. Tuples found immutable
/// leave the cycle collector on the way (see below): one walk, not two.
fn immutable_size(value: &Bound<'_, PyAny>, depth: usize) -> Option<usize> {
    // Lengths read from the objects' headers, as CPython's own macros do (`len` would go
    // through the type's generic length slot and an error check, twice a typical message).
    if value.is_exact_instance_of::<PyBytes>() {
        // SAFETY: a live bytes object, the GIL held.
        let len = unsafe { pyo3::ffi::Py_SIZE(value.as_ptr()) };
        return Some(OBJECT_BYTES + usize::try_from(len).unwrap_or(0));
    }
    if value.is_exact_instance_of::<PyString>() {
        // SAFETY: a live str object, the GIL held.
        let len = unsafe { pyo3::ffi::PyUnicode_GET_LENGTH(value.as_ptr()) };
        return Some(OBJECT_BYTES + usize::try_from(len).unwrap_or(0));
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
        // A tuple of immutable values can hold no reference cycle: the cycle collector
        // stops tracking it, as CPython's own collector does once it looks. Mail queued in
        // a burst would otherwise be walked by every young collection its sending set off.
        // SAFETY: the GIL is held and `value` is a live tuple; untracking one that is not
        // tracked is allowed.
        unsafe { pyo3::ffi::PyObject_GC_UnTrack(value.as_ptr().cast()) };
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
    /// Takes a value for sending: shared when immutable, else pickled now. Inlined for an
    /// immutable value (most sends'): a term returned through memory stalls the send.
    #[inline]
    pub fn copy_in(value: &Bound<'_, PyAny>) -> PyResult<Term> {
        if let Some(size) = immutable_size(value, 0) {
            return Ok(Term(Repr::Shared(value.clone().unbind()), size));
        }
        Self::pickled(value)
    }

    /// `copy_in` of a mutable value: a pickle.
    #[inline(never)]
    fn pickled(value: &Bound<'_, PyAny>) -> PyResult<Term> {
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

    /// Makes this term carry `trace` (see `traced`), in place.
    pub fn carry(&mut self, trace: MessageTrace) {
        let placeholder = Term(Repr::Wire(Vec::new()), 0);
        *self = std::mem::replace(self, placeholder).traced(trace);
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

    /// [`Term::encode`] into `out` (cleared first), a buffer the caller reuses: a message
    /// to another node then costs no allocation of its own.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> PyResult<()> {
        out.clear();
        if let Repr::Wire(bytes) = self.payload() {
            out.extend_from_slice(bytes);
            return Ok(());
        }
        Python::attach(|py| {
            match self.payload() {
                Repr::Shared(obj) => {
                    if !quick_pickle(obj.bind(py), out) {
                        out.extend_from_slice(&Self::to_bytes(obj.bind(py))?);
                    }
                }
                Repr::Pickled(bytes) => {
                    out.extend_from_slice(bytes.bind(py).cast::<PyBytes>()?.as_bytes())
                }
                Repr::Wire(_) | Repr::Traced(_) => unreachable!("handled above / unwrapped"),
            }
            Ok(())
        })
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

    /// Restores a value serialized by `to_bytes` (or by [`quick_pickle`]).
    pub fn from_bytes<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        if let Some(value) = quick_unpickle(py, bytes) {
            return value;
        }
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

/// Reads the pickles of plain immutable values (what [`quick_pickle`] writes, and
/// `pickle.dumps` of the same values, whose framing and memo entries it skips) without
/// calling `pickle.loads`, whose per-call setup (an Unpickler, its stacks, the bytes object
/// to read from) was most of a receiver's cost per message. None for anything else (another
/// opcode, a memo lookup, a string that is not strict UTF-8, bytes after the end): the
/// caller then calls `pickle.loads`, so every value comes back exactly as it would from
/// there.
pub fn quick_unpickle<'py>(py: Python<'py>, bytes: &[u8]) -> Option<PyResult<Bound<'py, PyAny>>> {
    struct Input<'a> {
        bytes: &'a [u8],
        at: usize,
    }
    impl<'a> Input<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let part = self.bytes.get(self.at..self.at.checked_add(n)?)?;
            self.at += n;
            Some(part)
        }
    }
    let mut input = Input { bytes, at: 0 };
    let mut take = |n: usize| input.take(n);
    let mut stack: Vec<Bound<'py, PyAny>> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    // PROTO first, as every pickle of protocol 2 and later has it.
    if take(1)? != [0x80] || take(1)?[0] > 5 {
        return None;
    }
    loop {
        let op = take(1)?[0];
        let value: Bound<'py, PyAny> = match op {
            // FRAME: a hint for buffered readers; MEMOIZE: only a memo lookup would use it.
            0x95 => {
                take(8)?;
                continue;
            }
            0x94 => {
                if stack.is_empty() {
                    return None;
                }
                continue;
            }
            b'N' => py.None().into_bound(py),
            0x88 => PyBool::new(py, true).to_owned().into_any(),
            0x89 => PyBool::new(py, false).to_owned().into_any(),
            b'K' => take(1)?[0].into_pyobject(py).ok()?.into_any(),
            b'M' => u16::from_le_bytes(take(2)?.try_into().ok()?)
                .into_pyobject(py)
                .ok()?
                .into_any(),
            b'J' => i32::from_le_bytes(take(4)?.try_into().ok()?)
                .into_pyobject(py)
                .ok()?
                .into_any(),
            // LONG1 of up to 8 bytes: a little-endian two's complement.
            0x8a => {
                let n = take(1)?[0] as usize;
                if n > 8 {
                    return None;
                }
                let digits = take(n)?;
                let fill = if digits.last().is_some_and(|b| b & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut le = [fill; 8];
                le[..n].copy_from_slice(digits);
                i64::from_le_bytes(le).into_pyobject(py).ok()?.into_any()
            }
            b'G' => f64::from_be_bytes(take(8)?.try_into().ok()?)
                .into_pyobject(py)
                .ok()?
                .into_any(),
            0x8c | b'X' => {
                let n = if op == 0x8c {
                    take(1)?[0] as usize
                } else {
                    u32::from_le_bytes(take(4)?.try_into().ok()?) as usize
                };
                let text = std::str::from_utf8(take(n)?).ok()?;
                PyString::new(py, text).into_any()
            }
            b'C' | b'B' => {
                let n = if op == b'C' {
                    take(1)?[0] as usize
                } else {
                    u32::from_le_bytes(take(4)?.try_into().ok()?) as usize
                };
                PyBytes::new(py, take(n)?).into_any()
            }
            b'(' => {
                marks.push(stack.len());
                continue;
            }
            b')' => PyTuple::empty(py).into_any(),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let start = stack.len().checked_sub(n)?;
                if marks.last().is_some_and(|m| *m > start) {
                    return None;
                }
                let items = stack.split_off(start);
                match PyTuple::new(py, items) {
                    Ok(t) => t.into_any(),
                    Err(e) => return Some(Err(e)),
                }
            }
            b't' => {
                let start = marks.pop()?;
                let items = stack.split_off(start);
                match PyTuple::new(py, items) {
                    Ok(t) => t.into_any(),
                    Err(e) => return Some(Err(e)),
                }
            }
            b'.' => {
                if take(1).is_some() || !marks.is_empty() || stack.len() != 1 {
                    return None;
                }
                return stack.pop().map(Ok);
            }
            _ => return None,
        };
        stack.push(value);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value here, pickled by `quick_pickle` and by `pickle.dumps` (protocols 2 to 5),
    /// and every prefix of those pickles, reads back through `quick_unpickle` as
    /// `pickle.loads` reads it: the same type and repr, or None (then `pickle.loads` is
    /// called, so a malformed pickle fails as before).
    #[test]
    fn quick_unpickle_reads_what_pickle_loads_reads_or_leaves_it_to_pickle() {
        Python::attach(|py| {
            let values = py
                .eval(
                    c"[None, True, False, 0, 1, 255, 256, 65535, 65536, -1, -129, 2**31 - 1, \
                      -2**31, 2**31, 2**63 - 1, -2**63, 2**63, 2**64, 0.0, -0.0, 1.5, \
                      float('inf'), float('nan'), '', 'inc', 'é' * 200, 'x' * 300, '\\ud800', \
                      b'', b'x' * 64, b'y' * 300, (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), \
                      ((), ((1,), 'a')), ('inc', b'x' * 64), ((((((((((1,),),),),),),),),),), \
                      ('a', 'a', 'a'), [1, 2], {'a': 1}, frozenset([1])]",
                    None,
                    None,
                )
                .expect("values");
            let same = py
                .eval(
                    c"lambda a, b: type(a) is type(b) and repr(a) == repr(b)",
                    None,
                    None,
                )
                .expect("same");
            let dumps = pickle_fn(py, "dumps").expect("dumps");
            let loads = pickle_fn(py, "loads").expect("loads");
            let mut read_quickly = 0;
            for value in values.try_iter().expect("list") {
                let value = value.expect("value");
                let mut pickles = Vec::new();
                let mut quick = Vec::new();
                if quick_pickle(&value, &mut quick) {
                    pickles.push(quick);
                }
                for protocol in 2..=5 {
                    let bytes = dumps.call1((&value, protocol)).expect("dumps");
                    pickles.push(bytes.cast::<PyBytes>().expect("bytes").as_bytes().to_vec());
                }
                for pickle in &pickles {
                    for end in 0..=pickle.len() {
                        let part = &pickle[..end];
                        let Some(quick) = quick_unpickle(py, part) else {
                            continue;
                        };
                        let quick = quick.expect("a value");
                        let slow = loads
                            .call1((PyBytes::new(py, part),))
                            .expect("pickle.loads reads it too");
                        assert!(
                            same.call1((&quick, &slow))
                                .expect("compare")
                                .is_truthy()
                                .expect("bool"),
                            "{value} from {part:?}: {quick} != {slow}"
                        );
                        read_quickly += usize::from(end == pickle.len());
                    }
                }
            }
            assert!(
                read_quickly > 100,
                "most pickles read quickly: {read_quickly}"
            );
        });
    }
}
