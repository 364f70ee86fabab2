//! The Snowflake client's name resolution: a host's addresses are looked up once and kept for
//! [`KEEP`].
//!
//! The HTTP client resolves the host before every request, a request on a pooled connection too,
//! and with a timeout set (every request has one) its own resolver starts a thread for each lookup
//! so that a slow DNS server cannot outlast the timeout. A worker sends a request per batch: that
//! was a thread and a DNS query per batch. Here the client's resolver (its thread, its timeout)
//! runs only for a host whose addresses are older than [`KEEP`]; in between, requests take them
//! from memory. A failed lookup is not kept, and a request that could not reach the host drops
//! what was kept ([`KeptResolver::forget`]): the next request looks up again.
//!
//! A minute is about the time Snowflake's account hostnames are kept by DNS caches; when an
//! account's addresses change, connections already open keep working, and new ones use the new
//! addresses within [`KEEP`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a host's addresses are used before they are looked up again.
pub const KEEP: Duration = Duration::from_secs(60);

/// Resolves through the HTTP client's own resolver and keeps each host's addresses for [`KEEP`].
/// Clones share what is kept: the client keeps one to [`forget`](Self::forget) with.
#[derive(Debug, Default, Clone)]
pub struct KeptResolver(Arc<Kept>);

#[derive(Debug, Default)]
struct Kept {
    lookup: DefaultResolver,
    /// By scheme and authority (`https://acct.snowflakecomputing.com`): when looked up, and what.
    hosts: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl KeptResolver {
    /// Drops every kept address: after a request that could not reach its host (which may have
    /// moved), the next one looks the host up again.
    pub fn forget(&self) {
        self.0.hosts.lock().clear();
    }

    /// How many hosts have addresses kept.
    #[cfg(test)]
    pub(crate) fn hosts_kept(&self) -> usize {
        self.0.hosts.lock().len()
    }
}

impl Resolver for KeptResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or_default(),
            uri.authority().map(|a| a.as_str()).unwrap_or_default()
        );
        if let Some((at, addrs)) = self.0.hosts.lock().get(&host) {
            if at.elapsed() < KEEP {
                return Ok(addrs.clone());
            }
        }
        // Not under the mutex: a slow lookup must not hold back requests to a host already known.
        let addrs = self.0.lookup.resolve(uri, config, timeout)?;
        self.0
            .hosts
            .lock()
            .insert(host, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ureq::unversioned::transport::time::Duration as UreqDuration;

    pub(crate) fn resolve(
        r: &KeptResolver,
        url: &str,
    ) -> Result<Vec<std::net::SocketAddr>, ureq::Error> {
        let uri: Uri = url.parse().unwrap();
        let timeout = NextTimeout {
            after: UreqDuration::from(Duration::from_secs(5)),
            reason: ureq::Timeout::Resolve,
            per_read: None,
            per_write: None,
        };
        r.resolve(&uri, &Config::default(), timeout)
            .map(|a| a.to_vec())
    }

    #[test]
    fn a_host_is_looked_up_once_and_its_addresses_kept() {
        let r = KeptResolver::default();
        let first = resolve(&r, "http://127.0.0.1:8080/api/v2/statements").unwrap();
        assert_eq!(first, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(r.hosts_kept(), 1);
        // A second request to the same host, another path: the kept addresses, no new entry.
        let at = r.0.hosts.lock()["http://127.0.0.1:8080"].0;
        let again = resolve(&r, "http://127.0.0.1:8080/api/v2/statements/x").unwrap();
        assert_eq!(again, first);
        assert_eq!(r.0.hosts.lock()["http://127.0.0.1:8080"].0, at);
        // Another port is another host.
        let other = resolve(&r, "http://127.0.0.1:9090/").unwrap();
        assert_eq!(other, vec!["127.0.0.1:9090".parse().unwrap()]);
        assert_eq!(r.hosts_kept(), 2);
    }

    #[test]
    fn addresses_older_than_a_minute_are_looked_up_again() {
        let r = KeptResolver::default();
        let stale: std::net::SocketAddr = "10.0.0.1:443".parse().unwrap();
        let mut addrs = r.empty();
        addrs.push(stale);
        let Some(long_ago) = Instant::now().checked_sub(KEEP + Duration::from_secs(1)) else {
            return; // a clock this young cannot hold an entry that old
        };
        r.0.hosts
            .lock()
            .insert("https://127.0.0.1:8443".into(), (long_ago, addrs.clone()));
        let looked_up = resolve(&r, "https://127.0.0.1:8443/").unwrap();
        assert_eq!(looked_up, vec!["127.0.0.1:8443".parse().unwrap()]);
        // Within the minute the kept ones are used, whatever the DNS would say now.
        r.0.hosts
            .lock()
            .insert("https://127.0.0.1:8443".into(), (Instant::now(), addrs));
        assert_eq!(resolve(&r, "https://127.0.0.1:8443/").unwrap(), vec![stale]);
    }

    #[test]
    fn forgetting_drops_what_every_clone_kept() {
        let r = KeptResolver::default();
        let client_side = r.clone();
        resolve(&r, "http://127.0.0.1:8080/").unwrap();
        assert_eq!(client_side.hosts_kept(), 1);
        client_side.forget();
        assert_eq!(r.hosts_kept(), 0);
        // The next request looks the host up again, and keeps it again.
        resolve(&r, "http://127.0.0.1:8080/").unwrap();
        assert_eq!(r.hosts_kept(), 1);
    }

    #[test]
    fn a_failed_lookup_is_not_kept() {
        let r = KeptResolver::default();
        assert!(resolve(&r, "http://no-such-host.invalid:443/").is_err());
        assert_eq!(r.hosts_kept(), 0);
    }
}
