use std::path::PathBuf;

use crate::cli::ServeArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::image::{Platform, Store, layer};
use crate::output::{Printer, UserError};
use crate::registry::server::{ServeOptions, serve};

pub async fn run(settings: &Settings, printer: Printer, args: ServeArgs) -> anyhow::Result<()> {
    let root = match (&args.dir, &args.image) {
        (Some(dir), _) => dir.clone(),
        (None, Some(image)) => {
            let store = settings.store()?;
            let name = parse_ref(image)?;
            super::blocking(move || registry_of(&store, &name)).await?
        }
        (None, None) => return Err(UserError::new("give `--image NAME` or `--dir DIR`").into()),
    };
    let tls = args.tls_cert.clone().zip(args.tls_key.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let options = ServeOptions { root, listen: args.listen, htpasswd: args.htpasswd.clone(), tls };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(options, |addr| printer.status(&format!("Serving on {scheme}://{addr} (Ctrl-C to stop)")), shutdown)
        .await
        .map_err(|e| UserError::new(e.to_string()).into())
}

/// Unpacks (once, cached by diff_id) the `registry/` layer of `name` and returns its directory.
fn registry_of(store: &Store, name: &crate::image::ImageRef) -> anyhow::Result<PathBuf> {
    let image = super::require_image(store, name)?;
    let platform = image
        .for_platform(&Platform::host())
        .or(image.platforms.first())
        .cloned()
        .ok_or_else(|| UserError::new("image has no platforms"))?;
    let diff_ids = platform.config.rootfs().diff_ids().clone();
    for (i, l) in platform.manifest.layers().iter().enumerate().rev() {
        let diff = diff_ids.get(i).cloned().unwrap_or_default().replace("sha256:", "");
        let target = store.cache_dir().join("serve").join(&diff);
        if target.join("registry/docker/registry/v2").is_dir() {
            return Ok(target.join("registry"));
        }
        let digest = crate::image::Digest::from_oci(l.digest())?;
        let scratch = store.scratch_dir("serve-")?;
        let reader = layer::open_layer(store, &digest, l.media_type().as_ref())?;
        layer::apply_layer_where(reader, scratch.path(), &|p| p.starts_with("registry"))?;
        if scratch.path().join("registry/docker/registry/v2").is_dir() {
            std::fs::create_dir_all(target.parent().unwrap_or(&target))?;
            let kept = scratch.keep();
            std::fs::rename(&kept, &target)?;
            return Ok(target.join("registry"));
        }
    }
    Err(UserError::new(format!("image `{name}` has no registry/ layer"))
        .with_hint("it was built with `--build-mode lite`, or references no container images")
        .into())
}
