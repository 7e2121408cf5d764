//! `kiln kubeconfig`: an admin kubeconfig for a `kubernetes`-runtime cluster, signed by the
//! cluster CA kiln keeps on this machine, pointing at master0 (every master's IP is in the
//! apiserver certificate).

use crate::cli::KubeconfigArgs;
use crate::cli::settings::Settings;
use crate::kubernetes::pki::{APISERVER_PORT, ClusterPki, Validity};
use crate::output::{Printer, UserError};

pub async fn run(settings: &Settings, printer: Printer, args: KubeconfigArgs) -> anyhow::Result<()> {
    let path = &args.clusterfile;
    let clusterfile = crate::cli::cluster::read_clusterfile(path)?;
    let name = &clusterfile.cluster.name;
    let pki_dir = settings.root.join("clusters").join(name).join("pki");
    // Only an existing PKI: a new CA here would sign for a cluster that does not trust it.
    if !pki_dir.join("ca.crt").is_file() {
        return Err(UserError::new(format!(
            "cluster `{name}` has no PKI on this machine ({}): `kiln run` it first (with a `kubernetes`-runtime image)",
            pki_dir.display()
        ))
        .into());
    }
    let server = match args.server {
        Some(s) => format!("https://{s}"),
        None => {
            let master0 =
                clusterfile.master0().ok_or_else(|| UserError::new(format!("`{}` names no master", path.display())))?;
            match master0.ip {
                std::net::IpAddr::V6(ip) => format!("https://[{ip}]:{APISERVER_PORT}"),
                ip => format!("https://{ip}:{APISERVER_PORT}"),
            }
        }
    };
    let kubeconfig =
        tokio::task::spawn_blocking(move || ClusterPki::load(&pki_dir, Validity::default())?.admin_kubeconfig(&server))
            .await??;
    if args.output == "-" {
        printer.data(kubeconfig.expose());
        return Ok(());
    }
    let out = std::path::PathBuf::from(&args.output);
    crate::image::store::write_private(&out, kubeconfig.expose().as_bytes())?;
    printer.status(&format!("Wrote {} (mode 0600): an admin kubeconfig for cluster `{name}`", out.display()));
    Ok(())
}
