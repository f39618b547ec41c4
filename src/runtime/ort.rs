//! [`Backend`] on onnxruntime through the `ort` crate, loading the shared
//! library at run time. The library is found by [`find_library`]: an
//! explicit path, `ORT_DYLIB_PATH`, or the `onnxruntime` /
//! `onnxruntime-gpu` Python package. A missing library is an error.
//!
//! CPU or CUDA execution; CUDA is registered with `error_on_failure` so a
//! machine without a usable GPU fails loudly instead of running on the CPU.
//! Tensors are exchanged in host memory.

use super::{parse_info, Backend, GraphSource, Outputs, Repr, Value};
use crate::export::{GraphInfo, GraphKind, Precision};
use ::ort::environment::Environment;
use ::ort::ep;
use ::ort::session::{Session, SessionInputValue};
use ::ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use anyhow::{anyhow, bail, Context, Result};
use half::f16;
use prost::Message;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::{DatumType, Tensor};

/// Where onnxruntime runs the graphs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda {
        device_id: i32,
    },
}

#[derive(Clone, Debug, Default)]
pub struct OrtOptions {
    /// The onnxruntime shared library (`--ort-lib`); searched when absent.
    pub lib: Option<PathBuf>,
    pub device: Device,
    /// Intra-op threads; onnxruntime's default when absent.
    pub threads: Option<usize>,
}

fn ort_err<R>(e: ::ort::Error<R>) -> anyhow::Error {
    anyhow!("onnxruntime: {}", e.message())
}

/// File names the onnxruntime library has on this platform.
fn is_library_name(name: &str) -> bool {
    if name.contains("providers") {
        return false;
    }
    if cfg!(target_os = "windows") {
        name.eq_ignore_ascii_case("onnxruntime.dll")
    } else if cfg!(target_os = "macos") {
        name.starts_with("libonnxruntime") && name.ends_with(".dylib")
    } else {
        name.starts_with("libonnxruntime.so")
    }
}

/// The onnxruntime library inside a Python `onnxruntime` package directory
/// (`<pkg>/capi/libonnxruntime.so*`), preferring the fully versioned name.
pub fn library_in_package(pkg: &Path) -> Option<PathBuf> {
    let capi = pkg.join("capi");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_library_name)
        })
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// The `onnxruntime` package directory as `python` sees it.
fn python_package(python: &Path) -> Option<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Python interpreters worth asking for the `onnxruntime` package: a
/// `.venv` in the current directory or one of its ancestors, or in an
/// ancestor of the running executable (a checkout's `target/` lies beside
/// its `.venv`), then `python3` and `python` on the PATH.
pub fn python_candidates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = vec![];
    let mut roots = vec![];
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.push(exe);
    }
    for root in roots {
        for dir in root.ancestors() {
            for rel in [".venv/bin/python", ".venv/Scripts/python.exe"] {
                let p = dir.join(rel);
                if p.exists() && !v.contains(&p) {
                    v.push(p);
                }
            }
        }
    }
    v.push("python3".into());
    v.push("python".into());
    v
}

/// Finds the onnxruntime shared library: `explicit`, else
/// `ORT_DYLIB_PATH`, else the Python package seen by [`python_candidates`]
/// (and `extra_pythons` first).
pub fn find_library(explicit: Option<&Path>, extra_pythons: &[PathBuf]) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("onnxruntime library {} does not exist", p.display());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "ORT_DYLIB_PATH points to {}, which does not exist",
            p.display()
        );
    }
    let mut tried = vec![];
    for py in extra_pythons.iter().cloned().chain(python_candidates()) {
        if let Some(pkg) = python_package(&py) {
            if let Some(lib) = library_in_package(&pkg) {
                return Ok(lib);
            }
        }
        tried.push(py.display().to_string());
    }
    bail!(
        "onnxruntime not found: give its shared library with --ort-lib or ORT_DYLIB_PATH, \
         or `pip install onnxruntime` (asked: {})",
        tried.join(", ")
    )
}

struct Env {
    lib: PathBuf,
    env: Environment,
}

static ENV: Mutex<Option<Arc<Env>>> = Mutex::new(None);

/// Loads onnxruntime from `lib` (once per process) and returns its environment.
fn environment(lib: &Path) -> Result<Arc<Env>> {
    let mut guard = ENV
        .lock()
        .map_err(|_| anyhow!("onnxruntime init lock poisoned"))?;
    if let Some(e) = guard.as_ref() {
        let same = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if same(&e.lib) != same(lib) {
            bail!(
                "onnxruntime is already loaded from {}; cannot also load {}",
                e.lib.display(),
                lib.display()
            );
        }
        return Ok(e.clone());
    }
    let builder = ::ort::init_from(lib)
        .map_err(|e| anyhow!("loading onnxruntime from {}: {e}", lib.display()))?;
    let env = builder
        .with_name("admin-convert")
        .build()
        .map_err(ort_err)?;
    let e = Arc::new(Env {
        lib: lib.to_path_buf(),
        env,
    });
    *guard = Some(e.clone());
    Ok(e)
}

/// The library onnxruntime was loaded from in this process, if it was.
pub fn loaded_library() -> Option<PathBuf> {
    ENV.lock().ok()?.as_ref().map(|e| e.lib.clone())
}

struct Loaded {
    session: Session,
    outputs: Vec<String>,
}

pub struct OrtBackend {
    source: GraphSource,
    info: GraphInfo,
    opts: OrtOptions,
    env: Arc<Env>,
    sessions: [Option<Loaded>; 3],
    /// Graphs too large for one protobuf message, written out for loading.
    _spill: Option<tempfile::TempDir>,
    spill_dir: Option<PathBuf>,
}

impl OrtBackend {
    /// Loads onnxruntime and prepares a backend; the encoder session is
    /// created now, the decoders on first use.
    pub fn new(source: GraphSource, opts: OrtOptions) -> Result<OrtBackend> {
        let lib = find_library(opts.lib.as_deref(), &[])?;
        OrtBackend::with_library(source, opts, &lib)
    }

    /// Like [`OrtBackend::new`] with an already located library.
    pub fn with_library(source: GraphSource, opts: OrtOptions, lib: &Path) -> Result<OrtBackend> {
        let env = environment(lib)?;
        let (info, spill) = match &source {
            GraphSource::Memory(g) => {
                let big = GraphKind::ALL.iter().any(|k| {
                    crate::export::onnx::initializer_bytes(g.get(*k))
                        >= crate::export::onnx::PROTO_LIMIT
                });
                let spill = if big {
                    let dir = tempfile::tempdir()?;
                    crate::export::write_graphs(g, dir.path())?;
                    Some(dir)
                } else {
                    None
                };
                (g.info, spill)
            }
            GraphSource::Dir(..) => (GraphInfo::default(), None),
        };
        let spill_dir = spill.as_ref().map(|d| d.path().to_path_buf());
        let mut b = OrtBackend {
            source,
            info,
            opts,
            env,
            sessions: [None, None, None],
            _spill: spill,
            spill_dir,
        };
        b.load(GraphKind::Encoder)?;
        if let GraphSource::Dir(..) = b.source {
            let path = b
                .source
                .path(GraphKind::Encoder)
                .expect("a directory source");
            let s = &b.sessions[0].as_ref().expect("loaded above").session;
            let meta = s.metadata().map_err(ort_err)?;
            b.info = parse_info(meta.custom("admin_convert.info"), &path)?;
        }
        Ok(b)
    }

    /// Creates every session now instead of on first use.
    pub fn load_all(&mut self) -> Result<()> {
        for k in GraphKind::ALL {
            self.load(k)?;
        }
        Ok(())
    }

    fn load(&mut self, kind: GraphKind) -> Result<&mut Loaded> {
        let i = kind.index();
        if self.sessions[i].is_none() {
            let mut b = Session::builder(&self.env.env).map_err(ort_err)?;
            if let Some(n) = self.opts.threads {
                b = b.with_intra_threads(n).map_err(ort_err)?;
            }
            if let Device::Cuda { device_id } = self.opts.device {
                let cuda = ep::CUDA::default()
                    .with_device_id(device_id)
                    .with_tf32(false)
                    .build()
                    .error_on_failure();
                b = b
                    .with_execution_providers([cuda])
                    .map_err(|e| anyhow!("onnxruntime: CUDA is not usable: {}", e.message()))?;
            }
            let file = kind.file_name(self.source.precision());
            let session = match (&self.source, &self.spill_dir) {
                (GraphSource::Memory(g), None) => {
                    let bytes = g.get(kind).encode_to_vec();
                    b.commit_from_memory(&bytes)
                        .map_err(|e| anyhow!("onnxruntime: loading {file}: {}", e.message()))?
                }
                (GraphSource::Memory(_), Some(dir)) => {
                    let path = dir.join(&file);
                    b.commit_from_file(&path).map_err(|e| {
                        anyhow!("onnxruntime: loading {}: {}", path.display(), e.message())
                    })?
                }
                (GraphSource::Dir(..), _) => {
                    let path = self.source.path(kind).expect("a directory source");
                    b.commit_from_file(&path).map_err(|e| {
                        anyhow!("onnxruntime: loading {}: {}", path.display(), e.message())
                    })?
                }
            };
            let outputs = session
                .outputs()
                .iter()
                .map(|o| o.name().to_string())
                .collect();
            self.sessions[i] = Some(Loaded { session, outputs });
        }
        Ok(self.sessions[i].as_mut().expect("loaded just above"))
    }
}

pub(crate) fn datum_type(v: &DynValue) -> DatumType {
    match v.dtype() {
        ValueType::Tensor { ty, .. } => match ty {
            TensorElementType::Float32 => DatumType::F32,
            TensorElementType::Float16 => DatumType::F16,
            TensorElementType::Int64 => DatumType::I64,
            TensorElementType::Bool => DatumType::Bool,
            TensorElementType::Int32 => DatumType::I32,
            TensorElementType::Float64 => DatumType::F64,
            _ => DatumType::Blob,
        },
        _ => DatumType::Blob,
    }
}

fn shape_of(v: &DynValue) -> Vec<usize> {
    match v.dtype() {
        ValueType::Tensor { shape, .. } => shape.iter().map(|&d| d.max(0) as usize).collect(),
        _ => vec![],
    }
}

/// Copies an onnxruntime tensor (in host memory) into a tract tensor.
pub(crate) fn to_tract_tensor(v: &DynValue) -> Result<Tensor> {
    let shape = shape_of(v);
    let t = match datum_type(v) {
        DatumType::F32 => {
            Tensor::from_shape(&shape, v.try_extract_tensor::<f32>().map_err(ort_err)?.1)?
        }
        DatumType::F16 => {
            Tensor::from_shape(&shape, v.try_extract_tensor::<f16>().map_err(ort_err)?.1)?
        }
        DatumType::I64 => {
            Tensor::from_shape(&shape, v.try_extract_tensor::<i64>().map_err(ort_err)?.1)?
        }
        DatumType::Bool => {
            Tensor::from_shape(&shape, v.try_extract_tensor::<bool>().map_err(ort_err)?.1)?
        }
        dt => bail!("unexpected onnxruntime output type {dt:?}"),
    };
    Ok(t)
}

/// A borrowed onnxruntime view of a value.
fn as_input(v: &Value) -> Result<SessionInputValue<'_>> {
    Ok(match &v.0 {
        Repr::Ort(o) => SessionInputValue::from(&**o),
        Repr::Tract(t) => {
            let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
            let plain = t.try_as_plain_ram()?;
            match t.datum_type() {
                DatumType::F32 => TensorRef::from_array_view((shape, plain.as_slice::<f32>()?))
                    .map_err(ort_err)?
                    .into(),
                DatumType::F16 => TensorRef::from_array_view((shape, plain.as_slice::<f16>()?))
                    .map_err(ort_err)?
                    .into(),
                DatumType::I64 => TensorRef::from_array_view((shape, plain.as_slice::<i64>()?))
                    .map_err(ort_err)?
                    .into(),
                DatumType::Bool => TensorRef::from_array_view((shape, plain.as_slice::<bool>()?))
                    .map_err(ort_err)?
                    .into(),
                dt => bail!("cannot pass a {dt:?} tensor to onnxruntime"),
            }
        }
    })
}

impl Backend for OrtBackend {
    fn name(&self) -> String {
        match self.opts.device {
            Device::Cpu => "onnxruntime-cpu".into(),
            Device::Cuda { device_id } => format!("onnxruntime-cuda:{device_id}"),
        }
    }

    fn info(&self) -> &GraphInfo {
        &self.info
    }

    fn precision(&self) -> Precision {
        self.source.precision()
    }

    fn run(&mut self, kind: GraphKind, inputs: &[(&str, &Value)]) -> Result<Outputs> {
        let g = self.load(kind)?;
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, v) in inputs {
            feed.push((Cow::Borrowed(*name), as_input(v)?));
        }
        let mut out = g.session.run(feed).map_err(|e| {
            anyhow!(
                "onnxruntime: running the {} graph: {}",
                kind.name(),
                e.message()
            )
        })?;
        let mut values = Vec::with_capacity(g.outputs.len());
        for name in &g.outputs {
            let v = out
                .remove(name)
                .with_context(|| format!("onnxruntime returned no {name}"))?;
            values.push((name.clone(), Value(Repr::Ort(Arc::new(v)))));
        }
        Ok(Outputs(values))
    }
}
