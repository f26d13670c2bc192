//! `pipe ui`: the dashboard, served or exported.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::Path;

use anyhow::{bail, Result};

use super::Global;
use crate::engine::Project;

/// `pipe ui [--port N] [--bind ADDR] [--allow-host NAME]... [--open] [--export DIR]`.
pub fn ui(
    g: &Global,
    port: u16,
    bind: &str,
    mut allow_hosts: Vec<String>,
    open: bool,
    export: Option<&Path>,
) -> Result<()> {
    let project = Project::discover(g.cache.clone())?;
    if !project.pipelines.is_dir() {
        bail!(
            "no pipelines/ folder here or above {}: run `pipe ui` in a project",
            project.dir.display()
        );
    }
    match export {
        Some(dir) => {
            let n = crate::ui::export(&project, dir)?;
            println!("pipe ui: wrote {n} pages into {}", dir.display());
            Ok(())
        }
        None => {
            let addr = bind_address(bind)?;
            if bind.parse::<IpAddr>().is_err() {
                // A name given to --bind is a name the dashboard is reached by.
                allow_hosts.push(bind.to_string());
            }
            crate::ui::serve(
                project,
                &crate::ui::UiOptions {
                    port,
                    bind: addr,
                    allow_hosts,
                    open,
                },
            )
        }
    }
}

/// `--bind`'s address: an IP address as written, `localhost` as 127.0.0.1, or a host name
/// resolved (its first IPv4 address, else its first address).
pub fn bind_address(bind: &str) -> Result<IpAddr> {
    if let Ok(ip) = bind.parse::<IpAddr>() {
        return Ok(ip);
    }
    if bind.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let addrs: Vec<IpAddr> = match (bind, 0).to_socket_addrs() {
        Ok(a) => a.map(|a| a.ip()).collect(),
        Err(e) => bail!("--bind {bind}: not an address, and the name does not resolve ({e})"),
    };
    match addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
        Some(a) => Ok(*a),
        None => bail!("--bind {bind}: the name resolves to no address"),
    }
}
