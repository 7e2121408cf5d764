//! One file per command: resolve, call one capability, show the result.

pub mod build;
pub mod images;
pub mod inspect;
pub mod load;
pub mod rmi;
pub mod save;
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
