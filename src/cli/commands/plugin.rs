//! `kiln plugin list [IMAGE] [-f Clusterfile]`.

use crate::cli::PluginListArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::output::{Printer, Table, UserError};

pub async fn list(settings: &Settings, printer: Printer, args: PluginListArgs) -> anyhow::Result<()> {
    let clusterfile = args.clusterfile.as_deref().map(crate::cli::cluster::read_clusterfile).transpose()?;
    let image_name = args.image.clone().or_else(|| clusterfile.as_ref().and_then(|c| c.cluster.image.clone()));
    if image_name.is_none() && clusterfile.is_none() {
        return Err(UserError::new("name a cluster image, or a Clusterfile with `-f FILE`").into());
    }
    let store = settings.store()?;
    let image = match image_name {
        Some(name) => {
            let reference = parse_ref(&name)?;
            let store = store.clone();
            Some(super::blocking(move || super::require_image(&store, &reference)).await?)
        }
        None => None,
    };
    let set = super::blocking(move || {
        let roles = clusterfile.as_ref().map(crate::plugins::scope_roles);
        super::run::plugins_or_error(crate::plugins::load(
            image.as_ref().map(|i| (&store, i)),
            clusterfile.as_ref(),
            roles.as_ref(),
        ))
    })
    .await?;
    if printer.json {
        return printer.json(&set);
    }
    if set.is_empty() {
        printer.status("No plugins");
        return Ok(());
    }
    let mut table = Table::new(&["NAME", "REVISION", "PHASES", "SCOPE", "FROM"]);
    for p in set.plugins.values() {
        table.row(vec![
            p.name.clone(),
            p.revision.to_string(),
            p.phases.iter().map(|ph| ph.name()).collect::<Vec<_>>().join("|"),
            p.scope.iter().cloned().collect::<Vec<_>>().join("|"),
            p.origin.to_string(),
        ]);
    }
    printer.data(&table.render());
    for choice in &set.choices {
        printer.status(choice);
    }
    Ok(())
}
