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
