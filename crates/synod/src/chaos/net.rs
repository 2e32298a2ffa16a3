//! Network namespaces for `synod chaos`: one per member, each with a veth
//! to a bridge that the run creates and removes, so that partitions are
//! real dropped packets between processes (blackhole routes in the
//! members' namespaces), not a proxy's pretence, and slow links are real
//! queues (`tc`'s token bucket on a member's veth). Root and iproute2's
//! `ip` and `tc` are needed; without them those faults are refused and the
//! rest runs on loopback.

use std::process::Command;

/// A slowed link's rate and the most it queues (`Net::slow`): well below
/// what a member sends under the chaos workload, so the queue fills.
const SLOW_RATE: &str = "1mbit";
const SLOW_QUEUE: &str = "200ms";

/// The namespaces, veths and bridge of one run; all removed on drop.
pub struct Net {
    /// Names the run's namespaces and links apart from other runs'.
    tag: u32,
    members: usize,
}

/// Runs one `ip`/`tc` command; the error names it and says what it printed.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

impl Net {
    /// Why namespaces cannot be used here, if they cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            return Some("network namespaces need root".into());
        }
        for tool in ["ip", "tc"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Some(format!("{tool} (iproute2) is not installed"));
            }
        }
        None
    }

    /// A namespace per member, on one bridge.
    pub fn create(members: usize) -> Result<Net, String> {
        // The bridge's name is the run's claim on its tag: concurrent runs
        // (the test suite's) take different ones, and one left behind by a
        // killed run is skipped, not taken over.
        let first = std::process::id() % 240;
        let mut claimed = None;
        for k in 0..240 {
            let tag = (first + k) % 240;
            let br = format!("sch{tag}br");
            if run("ip", &["link", "add", &br, "type", "bridge"]).is_ok() {
                claimed = Some(tag);
                break;
            }
        }
        let tag = claimed.ok_or("no free bridge name sch0br..sch239br for the run")?;
        let net = Net { tag, members };
        let br = net.bridge();
        run(
            "ip",
            &["addr", "add", &format!("{}/24", net.host_ip()), "dev", &br],
        )?;
        run("ip", &["link", "set", &br, "up"])?;
        for i in 0..members {
            let (ns, veth) = (net.ns(i), net.veth(i));
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", &br, "up"])?;
            let addr = format!("{}/24", net.ip(i));
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("sch{}br", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("sch{}v{i}", self.tag)
    }

    /// Member `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("synod-chaos-{}-{i}", self.tag)
    }

    /// Member `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.231.{}.{}", self.tag, i + 1)
    }

    /// The clients' address, on the bridge.
    fn host_ip(&self) -> String {
        format!("10.231.{}.254", self.tag)
    }

    /// Cuts every link between members of different `groups`: each member
    /// gets a blackhole route to every member outside its group, so what
    /// it sends them is dropped (clients, on the bridge, still reach every
    /// member). Routes rather than `tc` filters: they need no kernel module
    /// beyond what namespaces need (this machine's kernel has no `netem`,
    /// `prio` or gact action).
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<(), String> {
        self.heal()?;
        for g in groups {
            for &i in g {
                for j in (0..self.members).filter(|j| !g.contains(j)) {
                    let dst = format!("{}/32", self.ip(j));
                    run(
                        "ip",
                        &["-n", &self.ns(i), "route", "add", "blackhole", &dst],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Every link works again.
    pub fn heal(&self) -> Result<(), String> {
        for i in 0..self.members {
            for j in (0..self.members).filter(|j| *j != i) {
                let dst = format!("{}/32", self.ip(j));
                // No such route (not cut) is fine.
                let _ = run(
                    "ip",
                    &["-n", &self.ns(i), "route", "del", "blackhole", &dst],
                );
            }
        }
        Ok(())
    }

    /// Slows member `i`'s link, both ways, to what a congested network
    /// gives: a token bucket of `SLOW_RATE` whose queue holds at most
    /// `SLOW_QUEUE` of traffic, so packets wait up to that long and, past
    /// it, are dropped. A stand-in for `netem`'s delay and loss, which this
    /// kernel lacks (`tbf` is built in): the delay and the losses come from
    /// the member's own load rather than from a fixed figure.
    pub fn slow(&self, i: usize) -> Result<(), String> {
        let tbf = [
            "root", "tbf", "rate", SLOW_RATE, "burst", "16kb", "latency", SLOW_QUEUE,
        ];
        let ns = self.ns(i);
        let mut inside = vec!["-n", &ns, "qdisc", "replace", "dev", "eth0"];
        inside.extend(tbf);
        run("tc", &inside)?;
        let veth = self.veth(i);
        let mut outside = vec!["qdisc", "replace", "dev", &veth];
        outside.extend(tbf);
        run("tc", &outside)
    }

    /// Member `i`'s link at full speed again.
    pub fn unslow(&self, i: usize) -> Result<(), String> {
        // No such qdisc (never slowed) is fine.
        let _ = run(
            "tc",
            &["-n", &self.ns(i), "qdisc", "del", "dev", "eth0", "root"],
        );
        let _ = run("tc", &["qdisc", "del", "dev", &self.veth(i), "root"]);
        Ok(())
    }

    fn remove(&self) {
        for i in 0..self.members {
            let _ = run("ip", &["netns", "del", &self.ns(i)]);
            let _ = run("ip", &["link", "del", &self.veth(i)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}
