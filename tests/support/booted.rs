//! Booted Linux guests: a Debian root built from Debian's packages (mmdebstrap, cached under
//! `$AUTOMEND_CACHE_DIR/guest-root`), one copy per guest, booted with systemd as PID 1 under
//! `systemd-nspawn --boot` in a network namespace of the fleet's own (so the agent's sysctls
//! change the guests' network stack, not the host's). Host loopback ports (the API server, the
//! package repository) are forwarded into that namespace's loopback. A guest that reboots
//! (`systemctl reboot` makes nspawn exit with 133) is started again unless the test says not to.
//!
//! Everything is cleaned up on drop, and by a reaper process if the test process dies.

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{repo, run_checked as sh};

/// The packages of the guest image (besides minbase).
const PACKAGES: &str = "systemd,systemd-sysv,dbus,apt,procps,iproute2";
const SUITE: &str = "bookworm";

fn cache_dir() -> PathBuf {
    std::env::var_os("AUTOMEND_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/automend")))
        .unwrap_or_else(|| PathBuf::from("/tmp/automend-cache"))
}

/// The cached root image, built on first use (about a minute; `flock` keeps parallel builds out).
pub fn root_image() -> (PathBuf, Duration) {
    let started = Instant::now();
    let dir = cache_dir().join("guest-root");
    let image = dir.join(format!("{SUITE}-{}", PACKAGES.replace(',', "+")));
    std::fs::create_dir_all(&dir).expect("cache folder");
    if image.join("usr/lib/systemd/systemd").exists() {
        return (image, started.elapsed());
    }
    let mirror = std::env::var("AUTOMEND_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let tmp = dir.join(format!("building-{}", std::process::id()));
    let script = format!(
        "set -e; [ -x '{img}/usr/lib/systemd/systemd' ] && exit 0; rm -rf '{tmp}'; \
         mmdebstrap --quiet --variant=minbase --include={PACKAGES} {SUITE} '{tmp}' {mirror}; \
         rm -rf '{img}'; mv '{tmp}' '{img}'",
        img = image.display(),
        tmp = tmp.display(),
    );
    sh(
        Command::new("flock")
            .arg(dir.join(".lock"))
            .args(["bash", "-c", &script]),
        "building the guest root image with mmdebstrap",
    );
    (image, started.elapsed())
}

/// One booted guest.
pub struct Guest {
    pub name: String,
    pub root: PathBuf,
    /// Start it again after a reboot.
    pub restart: Arc<AtomicBool>,
    /// Boots so far.
    pub boots: Arc<AtomicU32>,
    /// The running systemd-nspawn's pid (0 when stopped).
    nspawn: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

impl Guest {
    /// The pid of the guest's init (PID 1 inside), once booted.
    fn leader(&self) -> Option<u32> {
        let nspawn = self.nspawn.load(Ordering::SeqCst);
        if nspawn == 0 {
            return None;
        }
        let out = Command::new("pgrep")
            .args(["-P", &nspawn.to_string()])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
    }

    /// Run a command inside the guest (all its namespaces).
    pub fn exec(&self, cmd: &str) -> Option<Output> {
        let leader = self.leader()?;
        Command::new("nsenter")
            .args(["-t", &leader.to_string(), "-a", "/bin/sh", "-c", cmd])
            .output()
            .ok()
    }

    /// Its trimmed stdout, or "" when it failed or the guest is down.
    pub fn run(&self, cmd: &str) -> String {
        self.exec(cmd)
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Whether systemd inside has finished booting (running or degraded).
    pub fn booted(&self) -> bool {
        matches!(
            self.run("systemctl is-system-running || true").as_str(),
            "running" | "degraded"
        )
    }

    /// A file of the guest's root, read from the host.
    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join(path.trim_start_matches('/'))).unwrap_or_default()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.restart.store(false, Ordering::SeqCst);
        let pid = self.nspawn.load(Ordering::SeqCst);
        if pid != 0 {
            // SIGTERM: nspawn powers the guest off in order.
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while self.nspawn.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let pid = self.nspawn.load(Ordering::SeqCst);
            if pid != 0 {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
    }
}

/// Guests in one network namespace, with host ports forwarded into it.
pub struct Fleet {
    pub netns: String,
    pub dir: PathBuf,
    pub guests: Vec<Guest>,
}

impl Fleet {
    pub fn new(tag: &str) -> Fleet {
        let netns = format!("am-{tag}-{}", std::process::id());
        let dir = repo()
            .join("target/e2e-guests")
            .join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("guests folder");
        sh(
            Command::new("ip").args(["netns", "add", &netns]),
            "ip netns add",
        );
        sh(
            Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]),
            "bringing up the guests' loopback",
        );
        // A new network namespace inherits the host's IPv4 settings, and a host that forwards
        // (a node, Docker) would hand every guest `ip_forward=1`, a drift from the security
        // baseline that a guest under systemd-nspawn (read-only /proc/sys) can never remediate.
        // A fresh VM does not forward.
        sh(
            Command::new("ip").args([
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=0",
            ]),
            "turning forwarding off in the guests' network namespace",
        );
        // The reaper: if this process dies, stop the guests and remove what the fleet made.
        let reaper = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             pkill -KILL -f 'systemd-nspawn .*--machine={netns}-' ; sleep 1; \
             ip netns del {netns} 2>/dev/null; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = dir.display(),
        );
        sh(
            Command::new("setsid")
                .args(["-f", "bash", "-c", &reaper])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "starting the guest reaper",
        );
        Fleet {
            netns,
            dir,
            guests: Vec::new(),
        }
    }

    /// Forward the host's 127.0.0.1:`port` to 127.0.0.1:`port` inside the guests' namespace.
    pub fn forward(&self, port: u16) {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.netns)).expect("netns");
        let (tx, rx) = std::sync::mpsc::channel::<std::net::TcpStream>();
        // The listener's thread moves into the guests' namespace; the connections to the host
        // are made from a thread that stays in the host's.
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we own.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let listener =
                std::net::TcpListener::bind(("127.0.0.1", port)).expect("listening in the netns");
            for stream in listener.incoming().flatten() {
                if tx.send(stream).is_err() {
                    return;
                }
            }
        });
        std::thread::spawn(move || {
            for inbound in rx {
                std::thread::spawn(move || {
                    let Ok(outbound) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    let (mut a, mut b) = (
                        inbound.try_clone().expect("clone"),
                        outbound.try_clone().expect("clone"),
                    );
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut c, mut d) = (outbound, inbound);
                    let _ = std::io::copy(&mut c, &mut d);
                    let _ = d.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
    }

    /// A copy of `image` for a new guest, prepared by `setup` (given the guest's root) before
    /// it boots. Returns the copy's time.
    pub fn add(&mut self, image: &Path, name: &str, setup: impl FnOnce(&Path)) -> Duration {
        let started = Instant::now();
        let root = self.dir.join(name);
        sh(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(image)
                .arg(&root),
            "copying the guest root",
        );
        std::fs::write(root.join("etc/hostname"), format!("{name}\n")).expect("hostname");
        setup(&root);
        self.guests.push(Guest {
            name: name.into(),
            root,
            restart: Arc::new(AtomicBool::new(true)),
            boots: Arc::default(),
            nspawn: Arc::default(),
            stop: Arc::default(),
            supervisor: None,
        });
        started.elapsed()
    }

    pub fn guest(&self, name: &str) -> &Guest {
        self.guests
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no guest {name}"))
    }

    /// Boot a guest under a supervisor that starts it again after each reboot (exit 133).
    pub fn boot(&mut self, name: &str, binds: &[(PathBuf, &str)]) {
        let netns = self.netns.clone();
        let log_path = self.dir.join(format!("{name}.console.log"));
        let g = self
            .guests
            .iter_mut()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no guest {name}"));
        let mut args: Vec<String> = vec![
            "--boot".into(),
            "--register=no".into(),
            "--keep-unit".into(),
            "--console=passive".into(),
            format!("--directory={}", g.root.display()),
            format!("--machine={netns}-{name}"),
            format!("--network-namespace-path=/run/netns/{netns}"),
        ];
        for (host, guest) in binds {
            args.push(format!("--bind-ro={}:{guest}", host.display()));
        }
        let (restart, boots, pid, stop) = (
            g.restart.clone(),
            g.boots.clone(),
            g.nspawn.clone(),
            g.stop.clone(),
        );
        g.supervisor = Some(std::thread::spawn(move || {
            loop {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .expect("console log");
                let mut child = Command::new("systemd-nspawn")
                    .args(&args)
                    // /proc/sys/net writable: the namespace is the guests' own.
                    .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("log"))
                    .stderr(log)
                    .spawn()
                    .expect("starting systemd-nspawn");
                boots.fetch_add(1, Ordering::SeqCst);
                pid.store(child.id(), Ordering::SeqCst);
                let status = child.wait();
                pid.store(0, Ordering::SeqCst);
                let code = status.ok().and_then(|s| s.code());
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log_path) {
                    let _ = writeln!(f, "== systemd-nspawn exited {code:?}");
                }
                if code == Some(133)
                    && restart.load(Ordering::SeqCst)
                    && !stop.load(Ordering::SeqCst)
                {
                    continue;
                }
                return;
            }
        }));
    }

    /// Whether the guest's systemd-nspawn is running.
    pub fn running(&self, name: &str) -> bool {
        self.guest(name).nspawn.load(Ordering::SeqCst) != 0
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for g in &mut self.guests {
            g.shutdown();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        if std::thread::panicking() {
            // Keep the console logs for the failure's reader; the guest roots (about 200 MB
            // each) go, or every failed run would leave a fleet's worth on the disk.
            for g in &self.guests {
                let _ = std::fs::remove_dir_all(&g.root);
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
