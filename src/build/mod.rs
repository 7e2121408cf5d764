//! `kiln build`: a Kubefile and a context directory become an image in the local store.
//!
//! Each platform is built on its own: instructions are executed in order, every
//! file-changing one yields one layer, and a layer cache keyed by (parent chain, instruction,
//! content of its sources) skips work whose inputs did not change. A multi-platform build
//! ends in an OCI image index. Errors about an instruction point at it in the Kubefile.

mod apps;
mod cache;
pub mod collect;
mod context;
mod offline;
mod sandbox;
mod sources;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};

pub use context::{Context, ContextError};
pub use offline::{CachedImage, OfflineError, OfflineOptions};
pub use sources::{ImageSource, SourceError};

use crate::error_chain;
use crate::image::layer::{self, EntryOptions, LayerBlob, LayerWriter};
use crate::image::media::{self, Compression};
use crate::image::{
    Application, Digest, ImageExtension, ImageRef, ImageType, Platform, PlatformImage, Store, StoreError,
    canonical_json,
};
use crate::kubefile::{self, AppSource, Instruction, InstructionKind, Kubefile, KubefileError, RunCommand, Span, Word};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub kubefile: PathBuf,
    pub context: PathBuf,
    pub tags: Vec<ImageRef>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub no_cache: bool,
    pub image_type: ImageType,
    /// At least one.
    pub platforms: Vec<Platform>,
    pub compression: Compression,
    /// Discover and cache container images (`None`: `--build-mode lite`).
    pub offline: Option<OfflineOptions>,
    /// `SOURCE_DATE_EPOCH`: the creation time written into configs and manifests (else now),
    /// and the newest mtime a layer entry may have, so the same inputs give the same digests.
    pub source_date_epoch: Option<chrono::DateTime<chrono::Utc>>,
}

/// Progress events; the CLI turns them into output.
pub trait BuildReporter: Send + Sync {
    /// Instruction `index` of `total` starts (or was served from the cache).
    fn step(&self, platform: &Platform, index: usize, total: usize, text: &str);
    fn cached(&self, platform: &Platform, index: usize);
    /// A line of RUN output.
    fn output(&self, line: &str);
    fn warning(&self, message: &str);
}

/// A reporter that drops everything.
pub struct SilentReporter;

impl BuildReporter for SilentReporter {
    fn step(&self, _: &Platform, _: usize, _: usize, _: &str) {}
    fn cached(&self, _: &Platform, _: usize) {}
    fn output(&self, _: &str) {}
    fn warning(&self, _: &str) {}
}

/// The result of a build.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildOutcome {
    pub digest: Digest,
    pub media_type: String,
    pub tags: Vec<String>,
    pub platforms: Vec<PlatformOutcome>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlatformOutcome {
    pub platform: Platform,
    pub manifest: Digest,
    pub layers_built: usize,
    pub layers_cached: usize,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BuildError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Kubefile(#[from] Box<KubefileError>),
    #[error("failed to read the Kubefile `{}`", path.display())]
    ReadKubefile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("base image `{0}` is not in the local store")]
    #[diagnostic(help("load it with `kiln load -i FILE` or pull it with `kiln pull {0}`"))]
    BaseMissing(String),
    #[error("base image `{image}` has no {platform} variant (it has {available})")]
    BasePlatform { image: String, platform: Platform, available: String },
    #[error("no tag given: use `-t NAME[:TAG]`")]
    NoTag,
    /// An OCI document (config, manifest, index) could not be assembled or encoded.
    #[error("failed to encode an image document: {0}")]
    Encode(String),
    #[error(transparent)]
    Discovery(#[from] collect::DiscoveryError),
    #[error(transparent)]
    Offline(#[from] OfflineError),
}

impl From<KubefileError> for BuildError {
    fn from(e: KubefileError) -> Self {
        Self::Kubefile(Box::new(e))
    }
}

type Result<T, E = BuildError> = std::result::Result<T, E>;

/// What a layer-producing step yields on a cache miss: the layer (none if nothing changed)
/// and, for APP, the registered application.
type Produced = Option<(LayerBlob, Option<Application>)>;

/// Runs a build and tags the result.
pub fn build(store: &Store, request: &BuildRequest, reporter: &dyn BuildReporter) -> Result<BuildOutcome> {
    if request.tags.is_empty() {
        return Err(BuildError::NoTag);
    }
    let source = fs::read_to_string(&request.kubefile)
        .map_err(|source| BuildError::ReadKubefile { path: request.kubefile.clone(), source })?;
    let display_name = request.kubefile.display().to_string();
    let kubefile = Kubefile::parse(&display_name, &source)?;
    for warning in kubefile.warnings() {
        reporter.warning(&warning.to_string());
    }
    let ctx = Context::open(&request.context)?;
    // Keeps GC from deleting layers written here before they are tagged.
    let _gc_guard = store.lock_gc_shared()?;

    let mut builders = Vec::new();
    for platform in &request.platforms {
        let mut builder = PlatformBuild::new(store, &ctx, &kubefile, request, platform, reporter)?;
        builder.run()?;
        builders.push(builder);
    }
    if let Some(options) = &request.offline {
        let mut found = discover_all(store, &mut builders, options)?;
        // What the base's registry holds for every platform is there already: not cached twice.
        found.images.retain(|f| !builders.iter().all(|b| b.holds_image(&f.image)));
        for w in &found.warnings {
            reporter.warning(w);
        }
        if let Some((layer, cached)) = offline::cache_images(store, &found, &request.platforms, options)? {
            for b in &mut builders {
                b.add_registry_layer(layer.clone(), &cached);
            }
        }
    }
    let mut built = Vec::new();
    for mut builder in builders {
        let counts = (builder.layers_built, builder.layers_cached);
        built.push((builder.commit()?, counts));
    }
    let (digest, media_type, size) = if let [(single, _)] = built.as_slice() {
        (single.manifest_digest.clone(), media::OCI_MANIFEST.to_owned(), single.manifest_size)
    } else {
        let manifests = built
            .iter()
            .map(|(p, _)| {
                let mut d = Descriptor::new(MediaType::ImageManifest, p.manifest_size, p.manifest_digest.to_oci());
                d.set_platform(Some(p.platform.to_oci()));
                d
            })
            .collect::<Vec<_>>();
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()
            .map_err(|e| BuildError::Encode(e.to_string()))?;
        let bytes = canonical_json(&index).map_err(|e| BuildError::Encode(e.to_string()))?;
        let (digest, size) = store.write_blob(&bytes)?;
        (digest, media::OCI_INDEX.to_owned(), size)
    };
    for tag in &request.tags {
        store.tag(tag, &digest, &media_type, size)?;
    }
    Ok(BuildOutcome {
        digest,
        media_type,
        tags: request.tags.iter().map(ToString::to_string).collect(),
        platforms: built
            .into_iter()
            .map(|(p, (layers_built, layers_cached))| PlatformOutcome {
                platform: p.platform,
                manifest: p.manifest_digest,
                layers_built,
                layers_cached,
            })
            .collect(),
    })
}

struct BuiltPlatform {
    platform: Platform,
    manifest_digest: Digest,
    manifest_size: u64,
}

/// What a container of the image runs: Docker's ENTRYPOINT, USER and WORKDIR.
#[derive(Debug, Default)]
struct ContainerSettings {
    entrypoint: Option<Vec<String>>,
    user: Option<String>,
    working_dir: Option<String>,
}

/// The state of one platform's build as instructions are applied.
struct PlatformBuild<'a> {
    store: &'a Store,
    ctx: &'a Context,
    kubefile: &'a Kubefile,
    request: &'a BuildRequest,
    platform: &'a Platform,
    reporter: &'a dyn BuildReporter,
    /// ARG and ENV values visible to `$VAR` expansion, plus the predefined platform args.
    vars: BTreeMap<String, String>,
    /// Config env in order of first definition.
    env: Vec<(String, String)>,
    labels: BTreeMap<String, String>,
    author: Option<String>,
    /// ENTRYPOINT, USER and WORKDIR of a container image (inherited from the base).
    container: ContainerSettings,
    layers: Vec<LayerBlob>,
    /// The `registry/` layers among `layers`: the base image's and this build's.
    registry_layers: BTreeSet<Digest>,
    history: Vec<oci_spec::image::History>,
    extension: ImageExtension,
    launch_set: bool,
    cache_key: String,
    scratch: tempfile::TempDir,
    rootfs: Option<PathBuf>,
    /// Directories known to exist in the image (for COPY `file existing-dir`).
    dir_index: Option<std::collections::HashSet<String>>,
    consumed_args: std::collections::HashSet<String>,
    layers_built: usize,
    layers_cached: usize,
    run_count: usize,
    /// The `sealer.image.container.images` annotation's entries: the images the base's
    /// registry layers hold, then this build's (none: no annotation).
    container_images: Vec<serde_json::Value>,
}

impl<'a> PlatformBuild<'a> {
    fn new(
        store: &'a Store,
        ctx: &'a Context,
        kubefile: &'a Kubefile,
        request: &'a BuildRequest,
        platform: &'a Platform,
        reporter: &'a dyn BuildReporter,
    ) -> Result<Self> {
        let mut vars = BTreeMap::new();
        vars.insert("ARCH".to_owned(), platform.architecture.clone());
        vars.insert("TARGETARCH".to_owned(), platform.architecture.clone());
        vars.insert("TARGETOS".to_owned(), platform.os.clone());
        vars.insert("TARGETPLATFORM".to_owned(), platform.to_string());
        vars.insert("TARGETVARIANT".to_owned(), platform.variant.clone().unwrap_or_default());
        Ok(Self {
            store,
            ctx,
            kubefile,
            request,
            platform,
            reporter,
            vars,
            env: Vec::new(),
            labels: BTreeMap::new(),
            author: None,
            container: ContainerSettings::default(),
            layers: Vec::new(),
            registry_layers: BTreeSet::new(),
            history: Vec::new(),
            extension: ImageExtension::new(request.image_type),
            launch_set: false,
            // Clamped layers differ from unclamped ones: they are cached apart.
            cache_key: request.source_date_epoch.map(|t| format!("mtime<={}", t.timestamp())).unwrap_or_default(),
            scratch: store.scratch_dir("build-")?,
            rootfs: None,
            dir_index: None,
            consumed_args: Default::default(),
            layers_built: 0,
            layers_cached: 0,
            run_count: 0,
            container_images: Vec::new(),
        })
    }

    fn layer_writer(&self) -> Result<LayerWriter> {
        let newest = self.request.source_date_epoch.map(|t| t.timestamp().max(0) as u64);
        Ok(LayerWriter::new(self.store, self.request.compression)?.clamp_mtimes(newest))
    }

    fn run(&mut self) -> Result<()> {
        let instructions = self.kubefile.instructions();
        let total = instructions.len();
        for (index, ins) in instructions.iter().enumerate() {
            let text = &self.kubefile.source()[ins.span.start..ins.span.end];
            let first_line = text.lines().next().unwrap_or_default();
            self.reporter.step(self.platform, index + 1, total, first_line);
            self.apply(index, ins)?;
        }
        let unused: Vec<&String> =
            self.request.build_args.keys().filter(|k| !self.consumed_args.contains(*k)).collect();
        if !unused.is_empty() {
            self.reporter.warning(&format!(
                "build args were not consumed by any ARG: {}",
                unused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        self.check_launchable()?;
        Ok(())
    }

    /// Whether the image's registry layers hold `image` for this platform (before this build
    /// adds its own: the base's).
    fn holds_image(&self, image: &str) -> bool {
        self.container_images.iter().any(|entry| entry.get("image").and_then(|i| i.as_str()) == Some(image))
    }

    /// Adds the `registry/` layer and records the container images for the manifest (the
    /// base's and this layer's).
    fn add_registry_layer(&mut self, layer: LayerBlob, images: &[CachedImage]) {
        let platform = serde_json::json!({
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "variant": self.platform.variant.clone().unwrap_or_default(),
        });
        let added = images.iter().map(|i| {
            let mut v = serde_json::json!({
                "image": i.image,
                "platform": platform,
                "platforms": i.platforms,
                "digest": i.digest,
                "origin": i.origin,
                "referencedBy": i.sources,
            });
            if let Some(app) = &i.app {
                v["appName"] = serde_json::Value::String(app.clone());
            }
            v
        });
        self.container_images.extend(added);
        if let Ok(h) =
            HistoryBuilder::default().created_by(format!("kiln: registry ({} container images)", images.len())).build()
        {
            self.history.push(h);
        }
        self.registry_layers.insert(layer.digest.clone());
        self.layers.push(layer);
    }

    fn error(&self, span: Span, message: impl Into<String>, label: &str) -> BuildError {
        self.kubefile.error_at(span, message, label).into()
    }

    fn expand(&self, word: &Word) -> Result<String> {
        word.expand(&|k| self.vars.get(k).cloned()).map_err(|e| self.error(word.span, e.to_string(), "cannot expand"))
    }

    /// Extends the cache chain; every instruction is part of it.
    fn chain(&mut self, parts: &[&str]) -> String {
        let mut h = blake3::Hasher::new();
        h.update(self.cache_key.as_bytes());
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        self.cache_key = h.finalize().to_hex().to_string();
        self.cache_key.clone()
    }

    fn apply(&mut self, index: usize, ins: &Instruction) -> Result<()> {
        match &ins.kind {
            InstructionKind::From(from) => self.from(from),
            InstructionKind::Arg(decls) => {
                for d in decls {
                    let value = match self.request.build_args.get(&d.name.value) {
                        Some(v) => Some(v.clone()),
                        None => d.default.as_ref().map(|w| self.expand(w)).transpose()?,
                    };
                    self.consumed_args.insert(d.name.value.clone());
                    if let Some(v) = value {
                        self.chain(&["ARG", &d.name.value, &v]);
                        self.vars.insert(d.name.value.clone(), v);
                    }
                }
                Ok(())
            }
            InstructionKind::Env(pairs) => {
                for kv in pairs {
                    let value = self.expand(&kv.value)?;
                    self.chain(&["ENV", &kv.key.value, &value]);
                    self.vars.insert(kv.key.value.clone(), value.clone());
                    self.extension.env.insert(kv.key.value.clone(), value.clone());
                    match self.env.iter_mut().find(|(k, _)| *k == kv.key.value) {
                        Some(slot) => slot.1 = value,
                        None => self.env.push((kv.key.value.clone(), value)),
                    }
                }
                self.history_entry(ins, true);
                Ok(())
            }
            InstructionKind::Label(pairs) => {
                for kv in pairs {
                    let value = self.expand(&kv.value)?;
                    self.labels.insert(kv.key.value.clone(), value);
                }
                self.history_entry(ins, true);
                Ok(())
            }
            InstructionKind::Maintainer(name) => {
                self.author = Some(name.clone());
                Ok(())
            }
            InstructionKind::Entrypoint(cmd) => {
                let argv = match cmd {
                    RunCommand::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
                    RunCommand::Exec(v) => v.clone(),
                };
                let parts: Vec<&str> = std::iter::once("ENTRYPOINT").chain(argv.iter().map(String::as_str)).collect();
                self.chain(&parts);
                self.container.entrypoint = Some(argv);
                self.history_entry(ins, true);
                Ok(())
            }
            InstructionKind::User(user) => {
                self.chain(&["USER", user]);
                self.container.user = Some(user.clone());
                self.history_entry(ins, true);
                Ok(())
            }
            InstructionKind::Workdir(dir) => {
                self.chain(&["WORKDIR", dir]);
                self.container.working_dir = Some(dir.clone());
                self.history_entry(ins, true);
                Ok(())
            }
            InstructionKind::KubeVersion(v) => {
                self.labels.insert("app.alpha.sealer.io/supported-kube-version".to_owned(), v.clone());
                Ok(())
            }
            InstructionKind::Copy(copy) => self.copy(index, ins, copy, false),
            InstructionKind::Add(copy) => self.copy(index, ins, copy, true),
            InstructionKind::Run(cmd) => self.run_instruction(index, ins, cmd),
            InstructionKind::App(app) => self.app(index, ins, app, None),
            InstructionKind::Cni(app) => self.app(index, ins, app, Some("cluster.alpha.sealer.io/kube-cni")),
            InstructionKind::Csi(app) => self.app(index, ins, app, Some("cluster.alpha.sealer.io/kube-csi")),
            InstructionKind::AppCmds { app, cmds } => {
                let Some(a) = self.extension.app_mut(&app.value) else {
                    return Err(self.error(app.span, format!("unknown application `{}`", app.value), "not defined"));
                };
                a.cmds = cmds.clone();
                Ok(())
            }
            InstructionKind::AppEnv { app, env } => {
                let mut values = Vec::new();
                for kv in env {
                    values.push((kv.key.value.clone(), self.expand(&kv.value)?));
                }
                let Some(a) = self.extension.app_mut(&app.value) else {
                    return Err(self.error(app.span, format!("unknown application `{}`", app.value), "not defined"));
                };
                a.env.extend(values);
                Ok(())
            }
            InstructionKind::Launch(names) => {
                self.extension.launch =
                    crate::image::Launch { cmds: vec![], app_names: names.iter().map(|n| n.value.clone()).collect() };
                self.launch_set = true;
                Ok(())
            }
            InstructionKind::Cmds(cmds) => {
                self.extension.launch = crate::image::Launch { cmds: cmds.clone(), app_names: vec![] };
                self.launch_set = true;
                Ok(())
            }
            InstructionKind::Cmd(cmd) => {
                if !self.launch_set {
                    self.extension.launch = Default::default();
                    self.launch_set = true;
                }
                self.extension.launch.cmds.push(cmd.clone());
                Ok(())
            }
        }
    }

    fn from(&mut self, from: &kubefile::From) -> Result<()> {
        if let Some(p) = &from.platform {
            let want = self.expand(p)?;
            let parsed: Platform = want
                .parse()
                .map_err(|e: crate::image::PlatformError| self.error(p.span, e.to_string(), "bad platform"))?;
            if parsed != *self.platform {
                self.reporter.warning(&format!(
                    "FROM --platform={parsed} while building {}: using the base's {} variant",
                    self.platform, self.platform
                ));
            }
        }
        if from.is_scratch() {
            self.chain(&["FROM", "scratch", &self.platform.to_string()]);
            return Ok(());
        }
        let name = self.expand(&from.image)?;
        let image_ref: ImageRef = name
            .parse()
            .map_err(|e: crate::image::ImageRefError| self.error(from.image.span, e.to_string(), "bad image name"))?;
        let image = self.store.image(&image_ref)?.ok_or_else(|| BuildError::BaseMissing(image_ref.to_string()))?;
        let base = image.for_platform(self.platform).cloned().ok_or_else(|| BuildError::BasePlatform {
            image: image_ref.to_string(),
            platform: self.platform.clone(),
            available: image.platforms.iter().map(|p| p.platform.to_string()).collect::<Vec<_>>().join(", "),
        })?;
        self.inherit(&base)?;
        self.kubefile.check_apps(&self.extension.applications.iter().map(|a| a.name.clone()).collect::<Vec<_>>())?;
        self.chain(&["FROM", &base.manifest_digest.to_string()]);
        Ok(())
    }

    fn inherit(&mut self, base: &PlatformImage) -> Result<()> {
        let diff_ids = base.config.rootfs().diff_ids();
        for (i, l) in base.manifest.layers().iter().enumerate() {
            let digest = Digest::from_oci(l.digest())
                .map_err(|e| StoreError::BadJson { digest: base.manifest_digest.clone(), reason: e.to_string() })?;
            let diff_id = diff_ids.get(i).and_then(|d| d.parse().ok()).ok_or_else(|| StoreError::BadJson {
                digest: base.config_digest.clone(),
                reason: format!("no valid diff_id for layer {i}"),
            })?;
            // A base's registry content stays registry content (sent to registry hosts only).
            if media::is_registry_layer(l) {
                self.registry_layers.insert(digest.clone());
            }
            self.layers.push(LayerBlob { digest, size: l.size(), diff_id, media_type: l.media_type().to_string() });
        }
        // And its list of container images, unless this build makes its own.
        if let Some(images) =
            base.manifest.annotations().as_ref().and_then(|a| a.get(media::ANNOTATION_SEALER_CONTAINER_IMAGES))
        {
            // An annotation that does not parse only costs a second copy of its images.
            self.container_images = serde_json::from_str(images).unwrap_or_default();
        }
        if let Some(config) = base.config.config() {
            for e in config.env().iter().flatten() {
                if let Some((k, v)) = e.split_once('=') {
                    self.env.push((k.to_owned(), v.to_owned()));
                    self.vars.insert(k.to_owned(), v.to_owned());
                }
            }
            for (k, v) in config.labels().iter().flatten() {
                self.labels.insert(k.clone(), v.clone());
            }
            self.container = ContainerSettings {
                entrypoint: config.entrypoint().clone(),
                user: config.user().clone(),
                working_dir: config.working_dir().clone(),
            };
        }
        self.history = base.config.history().clone().unwrap_or_default();
        if let Some(ext) = base.extension()? {
            self.extension.applications = ext.applications;
            self.extension.env = ext.env;
            // A child image launches what its base did unless it says otherwise.
            self.extension.launch = ext.launch;
        }
        Ok(())
    }

    fn history_entry(&mut self, ins: &Instruction, empty: bool) {
        let text = self.kubefile.source()[ins.span.start..ins.span.end].to_owned();
        let mut h = HistoryBuilder::default()
            .created_by(format!("kiln: {}", text.split_whitespace().collect::<Vec<_>>().join(" ")));
        if empty {
            h = h.empty_layer(true);
        }
        if let Ok(h) = h.build() {
            self.history.push(h);
        }
    }

    fn push_layer(&mut self, ins: &Instruction, blob: LayerBlob, cached: bool) -> Result<()> {
        if cached {
            self.layers_cached += 1;
        } else {
            self.layers_built += 1;
        }
        if let Some(root) = &self.rootfs {
            let reader = layer::open_layer(self.store, &blob.digest, &blob.media_type)?;
            layer::apply_layer(reader, root).map_err(|e| {
                self.error(
                    ins.span,
                    format!("failed to update the RUN rootfs with layer {}: {}", blob.digest, error_chain(&e)),
                    "here",
                )
            })?;
        }
        self.dir_index = None;
        self.history_entry(ins, false);
        self.layers.push(blob);
        Ok(())
    }

    /// Looks the cache up; on a hit the layer is reused, on a miss `produce` builds it.
    fn cached_layer(
        &mut self,
        index: usize,
        ins: &Instruction,
        key: &str,
        produce: &mut dyn FnMut(&mut Self) -> Result<Produced>,
    ) -> Result<Option<Application>> {
        // The same instruction compressed another way is another blob.
        let key = &format!("{key}.{}", self.request.compression.layer_media_type());
        if !self.request.no_cache
            && let Some(entry) = cache::lookup(self.store, key)
        {
            self.reporter.cached(self.platform, index + 1);
            let app = entry.app.clone();
            if let Some(layer) = entry.layer {
                self.push_layer(ins, layer, true)?;
            } else {
                self.history_entry(ins, true);
            }
            return Ok(app);
        }
        let produced = produce(self)?;
        let (layer, app) = match produced {
            Some((layer, app)) => (Some(layer), app),
            None => (None, None),
        };
        cache::store(self.store, key, &cache::Entry { layer: layer.clone(), app: app.clone() })?;
        match layer {
            Some(layer) => self.push_layer(ins, layer, false)?,
            None => self.history_entry(ins, true),
        }
        Ok(app)
    }

    fn resolve_source(&self, word: &Word, keyword: &str) -> Result<Vec<context::Source>> {
        let pattern = self.expand(word)?;
        match self.ctx.resolve(&pattern)? {
            context::Resolved::Found(found) if found.is_empty() => Err(self.error(
                word.span,
                format!("{keyword} source `{pattern}` not found in the build context `{}`", self.ctx.root().display()),
                "no such file",
            )),
            context::Resolved::Found(found) => Ok(found),
            context::Resolved::Escapes => Err(self.error(
                word.span,
                format!("{keyword} source `{pattern}` is outside the build context"),
                "outside the context",
            )),
            context::Resolved::Ignored => Err(self.error(
                word.span,
                format!(
                    "{keyword} source `{pattern}` is excluded by `{}`",
                    self.ctx.ignore_file().unwrap_or(".kilnignore")
                ),
                "ignored",
            )),
        }
    }

    fn entry_options(&self, copy: &kubefile::Copy) -> Result<EntryOptions> {
        let mut opts = EntryOptions::default();
        if let Some(w) = &copy.chown {
            let v = self.expand(w)?;
            let (u, g) = v.split_once(':').unwrap_or((&v, &v));
            let parse = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| self.error(w.span, format!("`--chown={v}` must be numeric uid[:gid]"), "not numeric"))
            };
            opts.uid = parse(u)?;
            opts.gid = parse(g)?;
        }
        if let Some(w) = &copy.chmod {
            let v = self.expand(w)?;
            opts.mode = Some(
                u32::from_str_radix(&v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| self.error(w.span, format!("`--chmod={v}` must be an octal mode"), "bad mode"))?,
            );
        }
        Ok(opts)
    }

    fn copy(&mut self, index: usize, ins: &Instruction, copy: &kubefile::Copy, is_add: bool) -> Result<()> {
        let keyword = if is_add { "ADD" } else { "COPY" };
        let opts = self.entry_options(copy)?;
        let dest_raw = self.expand(&copy.dest)?;
        let dest = context::clean_dest(&dest_raw);
        let mut locals = Vec::new();
        let mut remotes = Vec::new();
        let mut sources_key = String::new();
        for w in &copy.sources {
            let expanded = self.expand(w)?;
            if is_add && (expanded.starts_with("http://") || expanded.starts_with("https://")) {
                remotes.push((expanded, w.span));
                continue;
            }
            locals.extend(self.resolve_source(w, keyword)?);
        }
        sources_key.push_str(&context::hash_sources(self.ctx, &locals)?);
        // Remote files are downloaded now: their content is part of the cache key.
        let mut downloaded = Vec::new();
        for (url, span) in &remotes {
            let dir = self.scratch.path().join(format!("add-{index}-{}", downloaded.len()));
            let path = apps::download(url, &dir).map_err(|e| self.error(*span, e.to_string(), "download failed"))?;
            let hash =
                blake3::hash(&fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?).to_hex().to_string();
            sources_key.push_str(&hash);
            let rel = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            downloaded.push(context::Source { path, rel, is_dir: false });
        }
        let total_sources = locals.len() + downloaded.len();
        let dest_is_dir = dest_raw.ends_with('/')
            || dest.is_empty()
            || total_sources > 1
            || copy.sources.iter().any(|w| w.raw.contains(['*', '?', '[']))
            || locals.iter().any(|s| s.is_dir)
            || self.image_has_dir(&dest)?;
        let key = self.chain(&[keyword, &dest_raw, &format!("{opts:?}"), &sources_key]);
        let mut produce = |this: &mut Self| -> Result<Produced> {
            let mut w = this.layer_writer()?;
            let parent_of_targets = if dest_is_dir { dest.clone() } else { parent(&dest) };
            add_parents(&mut w, &parent_of_targets, dest_is_dir)?;
            for source in locals.iter() {
                this.add_source(&mut w, source, &dest, dest_is_dir, opts, is_add)?;
            }
            for source in downloaded.iter() {
                this.add_source(&mut w, source, &dest, dest_is_dir, opts, false)?;
            }
            Ok(Some((w.finish()?, None)))
        };
        self.cached_layer(index, ins, &key, &mut produce)?;
        Ok(())
    }

    /// Adds one COPY/ADD source to the layer with Docker's destination rules.
    fn add_source(
        &self,
        w: &mut LayerWriter,
        source: &context::Source,
        dest: &str,
        dest_is_dir: bool,
        opts: EntryOptions,
        extract: bool,
    ) -> Result<()> {
        let join = |base: &str, rel: &str| if base.is_empty() { rel.to_owned() } else { format!("{base}/{rel}") };
        if source.is_dir {
            for (path, rel, meta) in self.ctx.walk(source)? {
                w.add_from_disk(&path, &join(dest, &rel), &meta, opts)?;
            }
            return Ok(());
        }
        if extract && let Some(kind) = archive_kind(&source.path)? {
            return extract_into(w, &source.path, kind, dest, opts).map_err(BuildError::from);
        }
        let meta = fs::metadata(&source.path).map_err(|e| StoreError::io("stat", &source.path, e))?;
        let name = source.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let target = if dest_is_dir { join(dest, &name) } else { dest.to_owned() };
        w.add_from_disk(&source.path, &target, &meta, opts)?;
        Ok(())
    }

    /// Whether `path` is a directory in the image built so far.
    fn image_has_dir(&mut self, path: &str) -> Result<bool> {
        if path.is_empty() || self.layers.is_empty() {
            return Ok(path.is_empty());
        }
        if self.dir_index.is_none() {
            let mut dirs = std::collections::HashSet::new();
            for l in &self.layers {
                for d in cache::layer_dirs(self.store, l)? {
                    dirs.insert(d);
                }
            }
            self.dir_index = Some(dirs);
        }
        Ok(self.dir_index.as_ref().is_some_and(|d| d.contains(path)))
    }

    fn app(&mut self, index: usize, ins: &Instruction, app: &kubefile::App, label: Option<&str>) -> Result<()> {
        let dest = format!("application/apps/{}", app.name.value);
        let mut sources: Vec<(usize, context::Source)> = Vec::new();
        let mut key_parts = String::new();
        for (i, s) in app.sources.iter().enumerate() {
            match s {
                AppSource::Local(w) => {
                    let found = self.resolve_source(w, "APP")?;
                    key_parts.push_str(&context::hash_sources(self.ctx, &found)?);
                    sources.extend(found.into_iter().map(|f| (i, f)));
                }
                AppSource::Remote(w) => {
                    let url = self.expand(w)?;
                    let dir = self.scratch.path().join(format!("app-{index}-{i}"));
                    let path =
                        apps::download(&url, &dir).map_err(|e| self.error(w.span, e.to_string(), "download failed"))?;
                    let bytes = fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
                    key_parts.push_str(blake3::hash(&bytes).to_hex().as_str());
                    let rel = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    sources.push((i, context::Source { path, rel, is_dir: false }));
                }
            }
        }
        let key = self.chain(&["APP", &app.name.value, &key_parts]);
        let name = app.name.value.clone();
        let mut produce = |this: &mut Self| -> Result<Produced> {
            let mut w = this.layer_writer()?;
            add_parents(&mut w, &dest, true)?;
            let mut files = Vec::new();
            for (i, source) in &sources {
                if source.is_dir {
                    for (path, rel, meta) in this.ctx.walk(source)? {
                        w.add_from_disk(&path, &format!("{dest}/{rel}"), &meta, EntryOptions::default())?;
                        files.push(apps::AppFile { rel, source_index: *i, is_dir: meta.is_dir() });
                    }
                } else {
                    let meta = fs::metadata(&source.path).map_err(|e| StoreError::io("stat", &source.path, e))?;
                    let file_name =
                        source.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    w.add_from_disk(&source.path, &format!("{dest}/{file_name}"), &meta, EntryOptions::default())?;
                    files.push(apps::AppFile { rel: file_name, source_index: *i, is_dir: false });
                }
            }
            let (app_type, launch_files) = apps::detect(&name, &files);
            let application = Application {
                name: name.clone(),
                app_type,
                files: launch_files,
                version: "v1".into(),
                ..Default::default()
            };
            Ok(Some((w.finish()?, Some(application))))
        };
        let application = self.cached_layer(index, ins, &key, &mut produce)?;
        if let Some(application) = application {
            self.extension.upsert_app(application);
        }
        if let Some(prefix) = label {
            self.labels.insert(format!("{prefix}-{}", app.name.value), "true".to_owned());
        }
        Ok(())
    }

    /// Every app defined here must be launchable: a known type or APPCMDS.
    fn check_launchable(&self) -> Result<()> {
        for ins in self.kubefile.instructions() {
            if let Some(app) = ins.kind.app()
                && let Some(a) = self.extension.app(&app.name.value)
                && a.launch_command().is_none()
            {
                return Err(self
                    .kubefile
                    .error_at(app.name.span, format!("cannot tell how to launch application `{}`", a.name), "type unknown")
                    .with_help(format!(
                        "its files are neither all `.yaml`, all `.sh`, nor a helm chart; add `APPCMDS {} [\"<command>\"]`",
                        a.name
                    ))
                    .into());
            }
        }
        Ok(())
    }

    /// Only the parts of the rootfs image discovery reads (`manifests/`, `charts/`,
    /// `application/`), unpacked into a scratch directory.
    fn discovery_root(&self) -> Result<PathBuf> {
        let root = self.scratch.path().join("discovery");
        fs::create_dir_all(&root).map_err(|e| StoreError::io("create", &root, e))?;
        let keep = |p: &Path| {
            let first = p.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or_default();
            matches!(first, "manifests" | "charts" | "application")
        };
        for l in &self.layers {
            let reader = layer::open_layer(self.store, &l.digest, &l.media_type)?;
            layer::apply_layer_where(reader, &root, &keep).map_err(|e| {
                self.error(
                    Span::default(),
                    format!("failed to read layer {} for image discovery: {}", l.digest, error_chain(&e)),
                    "here",
                )
            })?;
        }
        Ok(root)
    }

    fn materialize_rootfs(&mut self, span: Span) -> Result<PathBuf> {
        if let Some(root) = &self.rootfs {
            return Ok(root.clone());
        }
        let root = self.scratch.path().join("rootfs");
        fs::create_dir_all(&root).map_err(|e| StoreError::io("create", &root, e))?;
        for l in &self.layers {
            let reader = layer::open_layer(self.store, &l.digest, &l.media_type)?;
            layer::apply_layer(reader, &root).map_err(|e| {
                self.error(
                    span,
                    format!(
                        "failed to prepare the rootfs: layer {} is corrupt or unreadable: {}",
                        l.digest,
                        error_chain(&e)
                    ),
                    "here",
                )
            })?;
        }
        self.rootfs = Some(root.clone());
        Ok(root)
    }

    fn run_instruction(&mut self, index: usize, ins: &Instruction, cmd: &RunCommand) -> Result<()> {
        let argv: Vec<String> = match cmd {
            RunCommand::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            RunCommand::Exec(v) => v.clone(),
        };
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ("HOME".into(), "/root".into()),
        ];
        env.extend(self.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        let env_key = env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\0");
        let key = self.chain(&["RUN", &argv.join("\0"), &env_key]);
        let mut produce = |this: &mut Self| -> Result<Produced> {
            let lower = this.materialize_rootfs(ins.span)?;
            this.run_count += 1;
            let base = this.scratch.path().join(format!("run-{}", this.run_count));
            let dirs = sandbox::OverlayDirs {
                lower,
                upper: base.join("upper"),
                work: base.join("work"),
                merged: base.join("merged"),
            };
            for d in [&dirs.upper, &dirs.work, &dirs.merged] {
                fs::create_dir_all(d).map_err(|e| StoreError::io("create", d, e))?;
            }
            let reporter = this.reporter;
            sandbox::run(&dirs, &argv, &env, &mut |line| reporter.output(line))
                .map_err(|e| this.error(ins.span, format!("RUN failed: {e}"), "this command"))?;
            let mut w = this.layer_writer()?;
            let entries = layer::add_overlay_upper(&mut w, &dirs.upper)?;
            let blob = w.finish()?;
            let _ = fs::remove_dir_all(&base);
            Ok((entries > 0).then_some((blob, None)))
        };
        self.cached_layer(index, ins, &key, &mut produce)?;
        Ok(())
    }

    fn commit(&mut self) -> Result<BuiltPlatform> {
        let created = self
            .request
            .source_date_epoch
            .unwrap_or_else(chrono::Utc::now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut labels: HashMap<String, String> = self.labels.clone().into_iter().collect();
        labels.extend(self.request.labels.clone());
        let mut config = ConfigBuilder::default()
            .env(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>())
            .labels(labels)
            .build()
            .map_err(|e| BuildError::Encode(e.to_string()))?;
        config.set_entrypoint(self.container.entrypoint.clone());
        config.set_user(self.container.user.clone());
        config.set_working_dir(self.container.working_dir.clone());
        let rootfs = RootFsBuilder::default()
            .typ("layers")
            .diff_ids(self.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>())
            .build()
            .map_err(|e| BuildError::Encode(e.to_string()))?;
        let mut image = ImageConfigurationBuilder::default()
            .architecture(Arch::from(self.platform.architecture.as_str()))
            .os(Os::from(self.platform.os.as_str()))
            .config(config)
            .rootfs(rootfs)
            .history(self.history.clone())
            .created(created.clone());
        if let Some(v) = &self.platform.variant {
            image = image.variant(v.clone());
        }
        if let Some(a) = &self.author {
            image = image.author(a.clone());
        }
        let image = image.build().map_err(|e| BuildError::Encode(e.to_string()))?;
        let config_bytes = canonical_json(&image).map_err(|e| BuildError::Encode(e.to_string()))?;
        let (config_digest, config_size) = self.store.write_blob(&config_bytes)?;

        let mut annotations: HashMap<String, String> = self.request.annotations.clone().into_iter().collect();
        annotations.insert(
            media::ANNOTATION_SEALER_EXTENSION.to_owned(),
            serde_json::to_string(&self.extension).map_err(|e| BuildError::Encode(e.to_string()))?,
        );
        annotations.insert(media::ANNOTATION_CREATED.to_owned(), created);
        if !self.container_images.is_empty() {
            let images =
                serde_json::to_string(&self.container_images).map_err(|e| BuildError::Encode(e.to_string()))?;
            annotations.insert(media::ANNOTATION_SEALER_CONTAINER_IMAGES.to_owned(), images);
        }
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let mut d = Descriptor::new(MediaType::from(l.media_type.as_str()), l.size, l.digest.to_oci());
                // Lets `kiln run` send the registry content only to registry hosts.
                if self.registry_layers.contains(&l.digest) {
                    d.set_annotations(Some(
                        [(media::ANNOTATION_LAYER_CONTENT.to_owned(), media::LAYER_CONTENT_REGISTRY.to_owned())].into(),
                    ));
                }
                d
            })
            .collect::<Vec<_>>();
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(MediaType::ImageConfig, config_size, config_digest.to_oci()))
            .layers(layers)
            .annotations(annotations)
            .build()
            .map_err(|e| BuildError::Encode(e.to_string()))?;
        let bytes = canonical_json(&manifest).map_err(|e| BuildError::Encode(e.to_string()))?;
        let (manifest_digest, manifest_size) = self.store.write_blob(&bytes)?;
        Ok(BuiltPlatform { platform: self.platform.clone(), manifest_digest, manifest_size })
    }
}

/// Finds the container images of every platform's rootfs (cached by the layers' diff_ids and
/// the lists' content, so a rebuild that changed nothing unpacks nothing).
fn discover_all(
    store: &Store,
    builders: &mut [PlatformBuild<'_>],
    options: &OfflineOptions,
) -> Result<collect::Discovery> {
    let helm = which("helm");
    let discovery_options = collect::DiscoveryOptions {
        image_lists: options.image_lists.clone(),
        ignored_lists: options.ignored_lists.clone(),
        helm: helm.clone(),
    };
    let mut merged: std::collections::BTreeMap<String, collect::FoundImage> = Default::default();
    let mut warnings: Vec<String> = Vec::new();
    for b in builders.iter_mut() {
        let mut key = blake3::Hasher::new();
        key.update(b"kiln-discovery-v1");
        for l in &b.layers {
            key.update(l.diff_id.to_string().as_bytes());
        }
        for list in options.image_lists.iter().chain(&options.ignored_lists) {
            key.update(list.display().to_string().as_bytes());
            key.update(&fs::read(list).unwrap_or_default());
        }
        key.update(helm.as_ref().map(|h| h.display().to_string()).unwrap_or_default().as_bytes());
        let path = store.cache_dir().join("discovery").join(format!("{}.json", key.finalize().to_hex()));
        let cached: Option<(Vec<collect::FoundImage>, Vec<String>)> =
            fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let (images, warns) = match cached {
            Some(c) => c,
            None => {
                let root = b.discovery_root()?;
                let found = collect::discover(&root, &discovery_options)?;
                if let Ok(bytes) = serde_json::to_vec(&(&found.images, &found.warnings)) {
                    let _ = crate::image::store::write_atomic(&path, &bytes);
                }
                (found.images, found.warnings)
            }
        };
        for f in images {
            let entry =
                merged.entry(f.image.clone()).or_insert_with(|| collect::FoundImage { sources: vec![], ..f.clone() });
            for s in f.sources {
                if !entry.sources.contains(&s) {
                    entry.sources.push(s);
                }
            }
        }
        for w in warns {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
    }
    Ok(collect::Discovery { images: merged.into_values().collect(), warnings })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.is_file()))
}

fn parent(path: &str) -> String {
    path.rsplit_once('/').map(|(p, _)| p.to_owned()).unwrap_or_default()
}

/// Adds directory entries for `dir` and its ancestors (Docker creates missing parents 0755).
fn add_parents(w: &mut LayerWriter, dir: &str, include_self: bool) -> Result<(), StoreError> {
    if dir.is_empty() {
        return Ok(());
    }
    let parts: Vec<&str> = dir.split('/').collect();
    let upto = if include_self { parts.len() } else { parts.len().saturating_sub(1) };
    for i in 1..=upto {
        w.add_dir(&parts[..i].join("/"), 0o755, 0, EntryOptions::default())?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum ArchiveKind {
    Tar,
    Gzip,
    Zstd,
}

/// ADD extracts local tar archives (plain, gzip, zstd), as Docker does.
fn archive_kind(path: &Path) -> Result<Option<ArchiveKind>, StoreError> {
    let mut head = [0u8; 512];
    let mut f = fs::File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    let n = f.read(&mut head).map_err(|e| StoreError::io("read", path, e))?;
    let head = &head[..n];
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveKind::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(ArchiveKind::Zstd)
    } else if n >= 262 && &head[257..262] == b"ustar" {
        Some(ArchiveKind::Tar)
    } else {
        None
    })
}

/// Re-emits an archive's entries under `dest`, refusing entries that would escape it.
fn extract_into(
    w: &mut LayerWriter,
    path: &Path,
    kind: ArchiveKind,
    dest: &str,
    opts: EntryOptions,
) -> Result<(), StoreError> {
    let file = fs::File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    let reader: Box<dyn Read> = match kind {
        ArchiveKind::Tar => Box::new(file),
        ArchiveKind::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        ArchiveKind::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| StoreError::io("decompress", path, e))?)
        }
    };
    let bad = |e: std::io::Error| StoreError::io("read archive", path, e);
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let rel = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let clean = context::clean_relative(&rel)
            .ok_or_else(|| bad(std::io::Error::other(format!("entry `{rel}` escapes the destination"))))?;
        if clean.is_empty() {
            continue;
        }
        let target = if dest.is_empty() { clean } else { format!("{dest}/{clean}") };
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().unwrap_or(0);
        let o = EntryOptions { uid: opts.uid, gid: opts.gid, mode: opts.mode };
        match header.entry_type() {
            tar::EntryType::Directory => w.add_dir(&target, mode, mtime, o)?,
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(bad)?.unwrap_or_default().into_owned();
                w.add_symlink(&target, &link, mtime, o)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().map_err(bad)?;
                w.add_file(&target, size, mode, mtime, o, &mut entry)?;
            }
            _ => tracing::warn!(entry = %rel, "skipping unsupported archive entry type"),
        }
    }
    Ok(())
}
