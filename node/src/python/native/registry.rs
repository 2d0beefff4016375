//! The node-local name registry.

use super::*;

pub(super) fn check_name(name: &str) -> PyResult<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(PyValueError::new_err(format!(
            "a name must be 1 to {MAX_NAME_LEN} bytes long, got {} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// `register(name, pid)`.
#[pyfunction]
pub(super) fn register(py: Python<'_>, name: &str, pid: &Bound<'_, PyPid>) -> PyResult<()> {
    check_name(name)?;
    match rt()?.register(name, pid.get().0) {
        Ok(()) => Ok(()),
        Err(RegistryError::Taken(holder)) => Err(error(
            py,
            &types(py)?.name_taken,
            (name, convert::pid_to_py(py, holder)?),
        )),
        Err(RegistryError::AlreadyNamed(existing)) => Err(PyValueError::new_err(format!(
            "{} is already registered as {existing:?}",
            pid.get().0
        ))),
        Err(RegistryError::Noproc) => Err(exit_error(py, pid.get().0, &Reason::Noproc)?),
    }
}

/// `unregister(name)` → whether it was registered.
#[pyfunction]
pub(super) fn unregister(name: &str) -> PyResult<bool> {
    Ok(rt()?.unregister(name))
}

/// `whereis(name)` → Pid or None.
#[pyfunction]
pub(super) fn whereis(name: &str) -> PyResult<Option<PyPid>> {
    Ok(rt()?.whereis(name).map(PyPid))
}

/// `registered()` → {name: pid}.
#[pyfunction]
pub(super) fn registered(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for (name, pid) in rt()?.registered() {
        out.set_item(name, PyPid(pid))?;
    }
    Ok(out)
}
