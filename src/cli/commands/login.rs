use std::io::Read;

use crate::cli::{LoginArgs, LogoutArgs};
use crate::output::{Printer, UserError};
use crate::registry::auth::{AuthFiles, Credential, Secret};

pub async fn run(printer: Printer, args: LoginArgs) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password)?;
    let password = password.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(UserError::new("no password on standard input")
            .with_hint("echo \"$PASSWORD\" | kiln login REGISTRY -u USER --password-stdin")
            .into());
    }
    let registry = normalise_registry(&args.registry);
    let opts = super::transport(&args.transport);
    let file = opts.auth_files.write.clone();
    crate::registry::login(
        opts,
        &registry,
        Credential { username: args.username.clone(), password: Secret::new(password) },
    )
    .await?;
    printer.status(&format!("Login succeeded for {} on {registry} (saved in {})", args.username, file.display()));
    Ok(())
}

pub async fn logout(printer: Printer, args: LogoutArgs) -> anyhow::Result<()> {
    let registry = normalise_registry(&args.registry);
    let files = AuthFiles::discover(args.authfile.clone());
    if files.remove(&registry)? {
        printer.status(&format!("Removed credentials for {registry} from {}", files.write.display()));
        Ok(())
    } else {
        Err(UserError::new(format!("not logged in to {registry} (no entry in {})", files.write.display())).into())
    }
}

/// `https://reg.example/` → `reg.example`; Docker Hub's aliases → `docker.io`.
fn normalise_registry(s: &str) -> String {
    let host = s.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    }
}
