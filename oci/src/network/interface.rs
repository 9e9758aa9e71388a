//! What `ip -json` says about links and addresses in the current network
//! namespace (or another one, through `ip -n`). Only the fields this module reads.

use serde::Deserialize;

use super::NetworkError;
use super::command::ip_json;

/// One link as listed by `ip -json -details link show`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Link {
    pub ifname: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub ifalias: Option<String>,
    #[serde(default)]
    pub linkinfo: Option<LinkInfo>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct LinkInfo {
    #[serde(default)]
    pub info_kind: Option<String>,
}

impl Link {
    pub(crate) fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }

    pub(crate) fn is_up(&self) -> bool {
        self.flags.iter().any(|flag| flag == "UP")
    }
}

/// One link's addresses as listed by `ip -json addr show`.
#[derive(Debug, Clone, Default, Deserialize)]
struct LinkAddresses {
    #[serde(default)]
    addr_info: Vec<Address>,
}

/// One address of a link.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Address {
    pub family: String,
    pub local: String,
    pub prefixlen: u8,
}

impl Address {
    pub(crate) fn cidr(&self) -> String {
        format!("{}/{}", self.local, self.prefixlen)
    }
}

/// `-n NAME` arguments for a command run in the named namespace, none for the current one.
fn in_netns(netns: Option<&str>, args: &[&str]) -> Vec<String> {
    let mut full = Vec::with_capacity(args.len() + 2);
    if let Some(name) = netns {
        full.push("-n".to_owned());
        full.push(name.to_owned());
    }
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    full
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The link called `name`, if it exists. Lists every link rather than asking for
/// one, so "no such link" is an answer and not a failed command.
pub(crate) fn find_link(netns: Option<&str>, name: &str) -> Result<Option<Link>, NetworkError> {
    let args = in_netns(netns, &["-details", "link", "show"]);
    let links: Vec<Link> = ip_json(&as_strs(&args))?;
    Ok(links.into_iter().find(|link| link.ifname == name))
}

/// The IPv4 addresses of link `name`, which must exist.
pub(crate) fn ipv4_addresses(
    netns: Option<&str>,
    name: &str,
) -> Result<Vec<Address>, NetworkError> {
    let args = in_netns(netns, &["-family", "inet", "addr", "show", "dev", name]);
    let links: Vec<LinkAddresses> = ip_json(&as_strs(&args))?;
    Ok(links
        .into_iter()
        .flat_map(|link| link.addr_info)
        .filter(|address| address.family == "inet")
        .collect())
}
