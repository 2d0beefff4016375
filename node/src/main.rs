//! `rebeam-node`: a Re:BEAM worker node embedding CPython.

use anyhow::{bail, Context, Result};
use clap::Parser;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rebeam_node::python::{self, NodeConfig};
use rebeam_node::runtime::Reason;
use std::path::PathBuf;

/// A Re:BEAM worker node: runs Python actors with OTP semantics.
#[derive(Parser, Debug)]
#[command(name = "rebeam-node", version)]
struct Cli {
    /// Run a single-machine node (the embedded default).
    #[arg(long)]
    dev: bool,
    /// The node's name, the first part of its pids.
    #[arg(long, default_value = "dev", env = "REBEAM_NODE_NAME")]
    name: String,
    /// Run the application in this directory (with a rebeam.toml) until Ctrl-C.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["run", "module"])]
    app: Option<PathBuf>,
    /// Run a Python script inside the node (wrap process code in rebeam.run(fn)).
    #[arg(long, value_name = "SCRIPT", conflicts_with = "module")]
    run: Option<PathBuf>,
    /// Run a Python module inside the node, like `python -m` (e.g. pytest).
    #[arg(short = 'm', long, value_name = "MODULE")]
    module: Option<String>,
    /// Executor threads to start with (the pool grows while handlers block).
    #[arg(long, default_value_t = 2, env = "REBEAM_EXECUTORS")]
    executors: usize,
    /// Arguments passed to the script or module as sys.argv[1:].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REBEAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rebeam-node: {err:#}");
            1
        }
    };
    flush_python();
    // Exit without finalizing the interpreter: executor threads stay attached to it.
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    if !cli.dev {
        bail!("only single-machine mode exists so far: pass --dev");
    }
    pyo3::append_to_inittab!(_rebeam_native);
    Python::initialize();
    python::start_node(&NodeConfig {
        name: cli.name.clone(),
        executors: cli.executors,
        ..NodeConfig::default()
    });
    Python::attach(|py| -> Result<()> {
        py.import("rebeam")
            .map_err(|e| python_error(py, e))
            .context(
                "cannot import the rebeam package; install it with `pip install ./client-py`",
            )?;
        Ok(())
    })?;
    if let Some(dir) = &cli.app {
        return run_app(dir);
    }
    if let Some(script) = &cli.run {
        let argv: Vec<String> = std::iter::once(script.display().to_string())
            .chain(cli.args.iter().cloned())
            .collect();
        return run_python(&argv, |py| {
            py.import("runpy")?
                .call_method1(
                    "run_path",
                    (script.display().to_string(), PyDict::new(py), "__main__"),
                )
                .map(drop)
        });
    }
    if let Some(module) = &cli.module {
        let argv: Vec<String> = std::iter::once(module.clone())
            .chain(cli.args.iter().cloned())
            .collect();
        return run_python(&argv, |py| {
            let kwargs = PyDict::new(py);
            kwargs.set_item("run_name", "__main__")?;
            kwargs.set_item("alter_sys", true)?;
            py.import("runpy")?
                .call_method("run_module", (module.as_str(),), Some(&kwargs))
                .map(drop)
        });
    }
    bail!("nothing to run: pass --app DIR, --run SCRIPT or -m MODULE");
}

/// The `_rebeam_native` module, registered before the interpreter starts.
#[pymodule]
fn _rebeam_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    python::native::init_module(m)
}

/// Runs Python code on the main thread with `sys.argv` set; maps SystemExit and errors
/// to an exit status.
fn run_python(argv: &[String], body: impl FnOnce(Python<'_>) -> PyResult<()>) -> Result<i32> {
    Python::attach(|py| {
        let sys = py.import("sys")?;
        sys.setattr("argv", PyList::new(py, argv)?)?;
        Ok(match body(py) {
            Ok(()) => 0,
            Err(err) => exit_status(py, err),
        })
    })
}

fn exit_status(py: Python<'_>, err: PyErr) -> i32 {
    if err.is_instance_of::<pyo3::exceptions::PySystemExit>(py) {
        let code = err.value(py).getattr("code").ok();
        return match code {
            Some(c) if c.is_none() => 0,
            Some(c) => c.extract::<i32>().unwrap_or_else(|_| {
                eprintln!("{c}");
                1
            }),
            None => 1,
        };
    }
    err.print(py);
    1
}

fn python_error(py: Python<'_>, err: PyErr) -> anyhow::Error {
    let text = err
        .traceback(py)
        .and_then(|tb| tb.format().ok())
        .unwrap_or_default();
    anyhow::anyhow!("{text}{}", err.value(py))
}

/// Runs an application until SIGINT/SIGTERM, then shuts its tree down in order.
fn run_app(dir: &std::path::Path) -> Result<i32> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("rebeam-signals".into())
        .spawn(move || {
            let mut count = 0;
            for _ in signals.forever() {
                count += 1;
                let master = python::node_runtime()
                    .ok()
                    .and_then(|rt| rt.whereis("$app_master").map(|pid| (rt, pid)));
                match master {
                    Some((rt, pid)) if count == 1 => {
                        eprintln!(
                            "rebeam-node: shutting down (press Ctrl-C again to exit at once)"
                        );
                        rt.exit_signal(pid, pid, Reason::Shutdown);
                    }
                    _ => {
                        flush_python();
                        std::process::exit(130);
                    }
                }
            }
        })
        .context("starting the signal thread")?;
    let dir = dir.display().to_string();
    run_python(std::slice::from_ref(&dir), |py| {
        let app = py.import("rebeam._app")?;
        let rebeam = py.import("rebeam")?;
        let code = rebeam.call_method1("run", (app.getattr("run_app")?, dir.as_str()))?;
        Err(pyo3::exceptions::PySystemExit::new_err(code.unbind()))
    })
}

fn flush_python() {
    Python::attach(|py| {
        if let Ok(sys) = py.import("sys") {
            for stream in ["stdout", "stderr"] {
                if let Ok(s) = sys.getattr(stream) {
                    let _ = s.call_method0("flush");
                }
            }
        }
    });
}
