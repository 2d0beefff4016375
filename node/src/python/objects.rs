//! Python-visible values made by the node: `Pid`, `Ref` and the reply handle `Sender`.

use super::term::Term;
use crate::runtime::{self, CallSlot, NodeId};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A process identifier as Python sees it: hashable, comparable, picklable, printable.
#[pyclass(module = "_rebeam_native", frozen, eq, ord, hash, from_py_object)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(pub runtime::Pid);

#[pymethods]
impl Pid {
    /// Also how pickles rebuild pids, so the node name is checked and bounded as any
    /// name from the wire.
    #[new]
    fn new(node: &str, incarnation: u64, serial: u64) -> PyResult<Self> {
        let node = NodeId::from_wire(node)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        Ok(Pid(runtime::Pid {
            node,
            incarnation,
            serial,
        }))
    }

    /// The node the process lives on.
    #[getter]
    fn node(&self) -> String {
        self.0.node.name().to_string()
    }

    /// The node incarnation that spawned it.
    #[getter]
    fn incarnation(&self) -> u64 {
        self.0.incarnation
    }

    /// Its serial number on that node incarnation.
    #[getter]
    fn serial(&self) -> u64 {
        self.0.serial
    }

    fn __repr__(&self) -> String {
        self.0.to_string()
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let me = slf.get();
        let args = PyTuple::new(
            slf.py(),
            [
                me.node().into_pyobject(slf.py())?.into_any(),
                me.0.incarnation.into_pyobject(slf.py())?.into_any(),
                me.0.serial.into_pyobject(slf.py())?.into_any(),
            ],
        )?;
        Ok((restorer(slf.py(), "restore_pid")?, args))
    }
}

/// The `rebeam._pid` function that rebuilds a pickled pid or ref, so pickles made inside a
/// node also load in a client outside any node.
fn restorer<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyAny>> {
    static PID: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    static REF: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    let cell = if name == "restore_pid" { &PID } else { &REF };
    Ok(cell.import(py, "rebeam._pid", name)?.clone())
}

/// A unique reference: names a monitor or a timer.
#[pyclass(module = "_rebeam_native", frozen, eq, hash, from_py_object)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ref(pub runtime::Ref);

#[pymethods]
impl Ref {
    #[new]
    fn new(id: u64) -> Self {
        Ref(runtime::Ref(id))
    }

    fn __repr__(&self) -> String {
        self.0.to_string()
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (u64,))> {
        Ok((restorer(slf.py(), "restore_ref")?, (slf.get().0 .0,)))
    }
}

/// Who is waiting for a reply: given to `handle_call`, used with `rebeam.reply`.
#[pyclass(module = "_rebeam_native", frozen)]
pub struct Sender {
    pub(crate) slot: Arc<CallSlot<Term>>,
}

#[pymethods]
impl Sender {
    /// The calling process, or None when the caller is outside any process.
    #[getter]
    fn pid(&self) -> Option<Pid> {
        self.slot.from().map(Pid)
    }

    fn __repr__(&self) -> String {
        match self.slot.from() {
            Some(pid) => format!("Sender({pid})"),
            None => "Sender(<outside>)".into(),
        }
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Sender>()
            .map(|o| Arc::ptr_eq(&self.slot, &o.get().slot))
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (Arc::as_ptr(&self.slot) as usize).hash(&mut h);
        h.finish()
    }
}
