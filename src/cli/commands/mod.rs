//! One file per command: resolve, call one capability, show the result.

pub mod build;
pub mod cert;
pub mod check;
pub mod delete;
pub mod exec;
pub mod images;
pub mod inspect;
pub mod kubeconfig;
pub mod load;
pub mod login;
pub mod plugin;
pub mod pull;
pub mod push;
pub mod rmi;
pub mod run;
pub mod save;
pub mod scale;
pub mod serve;
pub mod status;
pub mod tag;

use crate::image::{Image, ImageRef, Store};
use crate::output::UserError;

/// Loads an image by name or fails with a message the user can act on.
pub(crate) fn require_image(store: &Store, name: &ImageRef) -> anyhow::Result<Image> {
    store.image(name)?.ok_or_else(|| {
        UserError::new(format!("image `{name}` is not in the local store"))
            .with_hint("`kiln images` lists what is there")
            .into()
    })
}

/// Runs blocking work (file I/O, compression) off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Flags → transport options.
pub(crate) fn transport(args: &crate::cli::TransportArgs) -> crate::registry::TransportOptions {
    crate::registry::TransportOptions {
        plain_http: args.plain_http,
        insecure_registries: args.insecure_registries.clone(),
        insecure_skip_tls_verify: args.insecure_skip_tls_verify,
        ca_file: args.ca_file.clone(),
        retries: args.retries,
        max_concurrent: args.max_concurrent.max(1),
        auth_files: crate::registry::auth::AuthFiles::discover(args.authfile.clone()),
    }
}

/// The cluster's plugins: the Clusterfile's, and the image's when it is in the local store
/// (else those cannot run, which is said).
pub(crate) async fn plugins_of(
    settings: &crate::cli::Settings,
    printer: &crate::output::Printer,
    clusterfile: &crate::clusterfile::Clusterfile,
) -> anyhow::Result<crate::plugins::PluginSet> {
    let image = match &clusterfile.cluster.image {
        Some(name) => {
            let store = settings.store()?;
            let reference = crate::cli::settings::parse_ref(name)?;
            let found = {
                let store = store.clone();
                blocking(move || Ok(store.image(&reference)?)).await?
            };
            if found.is_none() {
                printer.warn(&format!("image `{name}` is not in the local store: only the Clusterfile's plugins run"));
            }
            found.map(|image| (store, image))
        }
        None => None,
    };
    let clusterfile = clusterfile.clone();
    blocking(move || {
        run::plugins_or_error(crate::plugins::for_cluster(image.as_ref().map(|(s, i)| (s, i)), &clusterfile))
    })
    .await
}
