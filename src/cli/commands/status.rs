use crate::cli::StatusArgs;
use crate::cli::settings::Settings;
use crate::output::{Printer, Table, UserError};
use crate::runtime::journal::{Journal, StepState};
use crate::runtime::kubernetes::STEPS as KUBERNETES_STEPS;
use crate::runtime::run::PHASES;

pub async fn run(settings: &Settings, printer: Printer, args: StatusArgs) -> anyhow::Result<()> {
    let clusters_dir = settings.root.join("clusters");
    let names: Vec<String> = match &args.cluster {
        Some(n) => vec![n.clone()],
        None => crate::cli::cluster::saved_clusters(&clusters_dir),
    };
    let mut journals = Vec::new();
    for name in names {
        match Journal::load(&clusters_dir.join(&name).join("journal.json"))? {
            Some(j) => journals.push(j),
            None if args.cluster.is_some() => {
                return Err(UserError::new(format!("no cluster `{name}` was run from this machine")).into());
            }
            None => {}
        }
    }
    if printer.json {
        return printer.json(&journals);
    }
    if journals.is_empty() {
        printer.status("No clusters were run from this machine");
        return Ok(());
    }
    for j in &journals {
        let state = match &j.completed_at {
            Some(at) => format!("complete ({at})"),
            None => "incomplete: `kiln run` again continues it".into(),
        };
        printer.data(&format!("cluster {} — {state}", j.cluster));
        let mut hosts: Vec<&String> = j.steps.values().flat_map(|s| s.keys()).collect();
        hosts.sort();
        hosts.dedup();
        // The phases this cluster's runtime has, in run order.
        let phases: Vec<&str> = PHASES
            .iter()
            .skip(1)
            .map(|(id, _)| *id)
            .chain(KUBERNETES_STEPS.iter().copied())
            .filter(|p| j.steps.contains_key(*p))
            .collect();
        let mut header = vec!["HOST"];
        header.extend(&phases);
        let mut table = Table::new(&header);
        for h in hosts {
            let mut row = vec![h.clone()];
            for phase in &phases {
                let cell = match j.steps.get(*phase).and_then(|s| s.get(h)) {
                    Some(StepState::Done { .. }) => "done".to_owned(),
                    Some(StepState::Failed { error, .. }) => format!("FAILED: {}", error.lines().next().unwrap_or("")),
                    None => "-".to_owned(),
                };
                row.push(cell);
            }
            table.row(row);
        }
        printer.data(&table.render());
    }
    Ok(())
}
