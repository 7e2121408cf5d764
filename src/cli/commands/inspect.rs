use crate::cli::InspectArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::image::{Platform, media};
use crate::output::{Printer, UserError, UserErrorExt};

/// The label prefix naming a component's version (`kiln.io/component.kubernetes=v1.37.2`).
const COMPONENT_LABEL: &str = "kiln.io/component.";

pub async fn run(settings: &Settings, printer: Printer, args: InspectArgs) -> anyhow::Result<()> {
    let store = settings.store()?;
    let name = parse_ref(&args.image)?;
    let want: Option<Platform> = args.platform.as_deref().map(str::parse).transpose().user_error()?;
    let value = super::blocking(move || {
        let image = super::require_image(&store, &name)?;
        let mut platforms = Vec::new();
        for p in &image.platforms {
            if want.as_ref().is_some_and(|w| !p.platform.matches(w)) {
                continue;
            }
            let container_images: serde_json::Value = p
                .manifest
                .annotations()
                .as_ref()
                .and_then(|a| a.get(media::ANNOTATION_SEALER_CONTAINER_IMAGES))
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or(serde_json::Value::Array(vec![]));
            let extension = p.extension()?;
            let launch: Vec<String> = extension
                .as_ref()
                .map(|e| {
                    e.applications
                        .iter()
                        .filter_map(|a| a.launch_command().map(|c| format!("{}: {c}", a.name)))
                        .collect()
                })
                .unwrap_or_default();
            // `kiln.io/component.NAME=VERSION` labels: what a cluster image is made of.
            let components: std::collections::BTreeMap<&str, &str> = p
                .config
                .config()
                .as_ref()
                .and_then(|c| c.labels().as_ref())
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.strip_prefix(COMPONENT_LABEL)?, v.as_str())))
                .collect();
            platforms.push(serde_json::json!({
                "platform": p.platform.to_string(),
                "components": components,
                "manifestDigest": p.manifest_digest.to_string(),
                "manifest": p.manifest,
                "configDigest": p.config_digest.to_string(),
                "config": p.config,
                "imageExtension": extension,
                "appLaunchCommands": launch,
                "containerImages": container_images,
            }));
        }
        if platforms.is_empty() {
            return Err(UserError::new(format!("image `{}` has no such platform", image.name())).into());
        }
        Ok(serde_json::json!({
            "name": image.name(),
            "digest": image.entry.digest.to_string(),
            "mediaType": image.entry.media_type,
            "platforms": platforms,
        }))
    })
    .await?;
    printer.json(&value)
}
