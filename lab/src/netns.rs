//! Hosts on Ethernet segments, entirely inside network namespaces the lab
//! creates (bridges too), so nothing touches the root namespace's interfaces
//! or routes. Every name carries a prefix unique to the lab, so labs can run
//! side by side; everything is removed when the lab goes, even when a test
//! panics or the demo is interrupted.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A lab step that failed: the command, where it ran and what it said.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// How a failed lab step reaches the caller. The demo reports it as an
/// error a newcomer reads ([`Report`]); a test or a benchmark has nothing
/// better to do than stop with it ([`Panic`], the default), and its call
/// sites stay free of error plumbing.
pub trait Failure {
    /// What a step that yields `T` returns.
    type Out<T>;
    /// Hands `result` over in this policy's shape.
    fn surface<T>(result: Result<T, Error>) -> Self::Out<T>;
}

/// Steps return `Result<T, Error>`.
pub enum Report {}

impl Failure for Report {
    type Out<T> = Result<T, Error>;
    fn surface<T>(result: Result<T, Error>) -> Result<T, Error> {
        result
    }
}

/// Steps return `T` and panic with the error.
pub enum Panic {}

impl Failure for Panic {
    type Out<T> = T;
    fn surface<T>(result: Result<T, Error>) -> T {
        result.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// What a lab must undo, shared with whoever may have to stop it early (the
/// demo's Ctrl-C handler). Running it twice is harmless.
#[derive(Clone, Default)]
pub struct Cleanup(Arc<Mutex<Owned>>);

#[derive(Default)]
struct Owned {
    children: Vec<Child>,
    namespaces: Vec<String>,
    dir: Option<PathBuf>,
    /// SIGTERM first, so programs remove what they added (the demo); a test
    /// lab kills at once, its namespaces going anyway.
    gentle: bool,
}

impl Cleanup {
    fn lock(&self) -> MutexGuard<'_, Owned> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops every process, deletes every namespace and the scratch
    /// directory.
    pub fn run(&self) {
        let mut owned = self.lock();
        if owned.gentle {
            for child in &owned.children {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .output();
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            for child in &mut owned.children {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        for child in &mut owned.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        owned.children.clear();
        // Deleting a namespace deletes its links; veth peers go with them.
        for ns in owned.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        if let Some(dir) = owned.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Forgets everything, so nothing is undone: the lab stays up.
    fn forget(&self) {
        let mut owned = self.lock();
        owned.children.clear();
        owned.namespaces.clear();
        owned.dir = None;
    }
}

/// Why a lab can't be built here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("network namespace labs need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (iproute2) is not installed".into()),
    }
}

/// Whether this process runs as root (effective user 0).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

/// Whether `test` skips because of `why`: prints the reason, and fails
/// instead under `CI=true`, where nothing may be skipped.
pub fn skip(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else {
        return false;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {why}, and CI=true does not allow skipping"
    );
    eprintln!("SKIPPED {test}: {why}");
    true
}

/// A lab of namespaces; dropped, it stops its processes and deletes them,
/// unless [`Lab::keep`] said otherwise.
pub struct Lab<F: Failure = Panic> {
    prefix: String,
    dir: PathBuf,
    cleanup: Cleanup,
    failure: PhantomData<F>,
}

impl Lab<Panic> {
    /// A new lab for `test`, or `None` (after printing why) where labs can't
    /// run. With `CI=true` that is a failure, not a skip.
    pub fn new(test: &str) -> Option<Self> {
        if skip(test, unavailable()) {
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("ilb{}x{n}", std::process::id());
        Some(Panic::surface(Self::with_prefix(
            &prefix,
            Cleanup::default(),
        )))
    }
}

impl Lab<Report> {
    /// A lab whose namespaces are `PREFIX-…` and whose scratch directory is
    /// `$TMPDIR/PREFIX`, undone through `cleanup` (which may also be run from
    /// elsewhere); processes get SIGTERM before they are killed.
    pub fn open(prefix: &str, cleanup: Cleanup) -> Result<Self, Error> {
        cleanup.lock().gentle = true;
        Self::with_prefix(prefix, cleanup)
    }
}

impl<F: Failure> Lab<F> {
    fn with_prefix(prefix: &str, cleanup: Cleanup) -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(prefix);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error(format!("creating {}: {e}", dir.display())))?;
        cleanup.lock().dir = Some(dir.clone());
        Ok(Self {
            prefix: prefix.to_string(),
            dir,
            cleanup,
            failure: PhantomData,
        })
    }

    /// A scratch directory for configurations and logs, removed with the lab.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leaves everything up when the lab goes (`ironlb demo --keep`).
    pub fn keep(&self) {
        self.cleanup.forget();
    }

    /// Creates a namespace with its loopback up; returns its full name,
    /// `PREFIX-short`.
    pub fn namespace(&mut self, short: &str) -> F::Out<String> {
        F::surface(self.add_namespace(short))
    }

    fn add_namespace(&self, short: &str) -> Result<String, Error> {
        let name = format!("{}-{short}", self.prefix);
        run("ip", &["netns", "add", &name])?;
        self.cleanup.lock().namespaces.push(name.clone());
        self.run_in(&name, &["ip", "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// A namespace `sw` holding bridge `br0`, the lab's Ethernet segment.
    pub fn switch(&mut self) -> F::Out<String> {
        F::surface(self.add_switch("sw"))
    }

    /// Another segment, in namespace `short`.
    pub fn switch_named(&mut self, short: &str) -> F::Out<String> {
        F::surface(self.add_switch(short))
    }

    fn add_switch(&self, short: &str) -> Result<String, Error> {
        let sw = self.add_namespace(short)?;
        self.run_in(&sw, &["ip", "link", "add", "br0", "type", "bridge"])?;
        self.run_in(&sw, &["ip", "link", "set", "br0", "up"])?;
        Ok(sw)
    }

    /// Plugs `host` into the switch: its `eth0` is one end of a veth pair whose
    /// other end (`port`) is a port of `br0`. `addresses` (with their prefix
    /// length) go on `eth0`.
    pub fn plug(&mut self, switch: &str, host: &str, port: &str, addresses: &[&str]) -> F::Out<()> {
        F::surface(self.add_port(switch, host, port, "eth0", addresses))
    }

    /// [`Lab::plug`], with the host's end named `link`.
    pub fn plug_as(
        &mut self,
        switch: &str,
        host: &str,
        port: &str,
        link: &str,
        addresses: &[&str],
    ) -> F::Out<()> {
        F::surface(self.add_port(switch, host, port, link, addresses))
    }

    fn add_port(
        &self,
        switch: &str,
        host: &str,
        port: &str,
        link: &str,
        addresses: &[&str],
    ) -> Result<(), Error> {
        self.run_in(
            switch,
            &[
                "ip", "link", "add", port, "type", "veth", "peer", "name", link, "netns", host,
            ],
        )?;
        self.run_in(switch, &["ip", "link", "set", port, "master", "br0", "up"])?;
        for a in addresses {
            self.run_in(host, &["ip", "addr", "add", a, "dev", link, "nodad"])?;
        }
        self.run_in(host, &["ip", "link", "set", link, "up"])?;
        Ok(())
    }

    /// The switch `sw` with `hosts` plugged in, each `(short name, bridge
    /// port, address with prefix length)`. Returns the switch's namespace and
    /// the hosts', in order.
    pub fn switch_with(&mut self, hosts: &[(&str, &str, &str)]) -> F::Out<(String, Vec<String>)> {
        F::surface((|| {
            let sw = self.add_switch("sw")?;
            let mut names = Vec::new();
            for (short, port, address) in hosts {
                let ns = self.add_namespace(short)?;
                self.add_port(&sw, &ns, port, "eth0", &[address])?;
                names.push(ns);
            }
            Ok((sw, names))
        })())
    }

    /// `count` nodes plugged into `switch`: namespaces `n1`… with `eth0` at
    /// `{subnet}.1{i}/24` (port `p{i}`); returns their namespaces.
    pub fn plug_nodes(&mut self, switch: &str, subnet: &str, count: usize) -> F::Out<Vec<String>> {
        F::surface(
            (1..=count)
                .map(|i| {
                    let ns = self.add_namespace(&format!("n{i}"))?;
                    let address = format!("{subnet}.1{i}/24");
                    self.add_port(switch, &ns, &format!("p{i}"), "eth0", &[&address])?;
                    Ok(ns)
                })
                .collect(),
        )
    }

    /// Connects `a` and `b` with a veth pair: `a_if` with `a_addr` in `a`,
    /// `b_if` with `b_addr` in `b` (addresses with their prefix length).
    pub fn wire(
        &mut self,
        a: &str,
        a_if: &str,
        a_addr: &str,
        b: &str,
        b_if: &str,
        b_addr: &str,
    ) -> F::Out<()> {
        F::surface((|| {
            self.run_in(
                a,
                &[
                    "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
                ],
            )?;
            self.run_in(a, &["ip", "addr", "add", a_addr, "dev", a_if, "nodad"])?;
            self.run_in(b, &["ip", "addr", "add", b_addr, "dev", b_if, "nodad"])?;
            self.run_in(a, &["ip", "link", "set", a_if, "up"])?;
            self.run_in(b, &["ip", "link", "set", b_if, "up"])?;
            Ok(())
        })())
    }

    /// Runs `cmd` inside `ns` and returns its output, whatever its status.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> F::Out<Output> {
        F::surface(output_in(ns, cmd))
    }

    /// Runs `cmd` inside `ns` and returns its standard output; a failure
    /// carries its standard error.
    pub fn exec_ok(&self, ns: &str, cmd: &[&str]) -> F::Out<String> {
        F::surface(self.run_in(ns, cmd))
    }

    fn run_in(&self, ns: &str, cmd: &[&str]) -> Result<String, Error> {
        let out = output_in(ns, cmd)?;
        if !out.status.success() {
            return Err(Error(format!(
                "in {ns}: {} failed: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `program args…` inside `ns` in the background, its output going
    /// to `log`; it is stopped with the lab. Returns its index for
    /// [`Lab::kill`], [`Lab::terminate`] and [`Lab::pid`].
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str], log: &Path) -> F::Out<usize> {
        F::surface((|| {
            let file = std::fs::File::create(log)
                .map_err(|e| Error(format!("creating {}: {e}", log.display())))?;
            let out = file
                .try_clone()
                .map_err(|e| Error(format!("{}: {e}", log.display())))?;
            let child = Command::new("ip")
                .args(["netns", "exec", ns, program])
                .args(args)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(file)
                .spawn()
                .map_err(|e| Error(format!("starting {program} in {ns}: {e}")))?;
            Ok(self.adopt(child))
        })())
    }

    /// Takes `child` (started by the caller, e.g. with its own environment) into
    /// the lab: it is stopped with it. Returns its index, as [`Lab::spawn`].
    pub fn adopt(&mut self, child: Child) -> usize {
        let mut owned = self.cleanup.lock();
        owned.children.push(child);
        owned.children.len() - 1
    }

    /// The process id of a process started with [`Lab::spawn`].
    pub fn pid(&self, index: usize) -> u32 {
        self.cleanup.lock().children[index].id()
    }

    /// Sends SIGTERM to a process started with [`Lab::spawn`] and waits for it.
    pub fn terminate(&mut self, index: usize) {
        let mut owned = self.cleanup.lock();
        let child = &mut owned.children[index];
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .output();
        let _ = child.wait();
    }

    /// Kills a process started with [`Lab::spawn`] with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        let mut owned = self.cleanup.lock();
        let child = &mut owned.children[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts nginx in `ns` as `name` with `blocks` (its `http {}` / `stream {}`
    /// configuration); the stream module is loaded, files go to [`Lab::dir`].
    pub fn nginx(&mut self, ns: &str, name: &str, blocks: &str) -> F::Out<usize> {
        let d = self.dir.display().to_string();
        let conf = self.dir.join(format!("{name}.conf"));
        let written = std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                 daemon off;\nmaster_process off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log;\n\
                 events {{}}\n{blocks}"
            ),
        );
        if let Err(e) = written {
            return F::surface(Err(Error(format!("writing {}: {e}", conf.display()))));
        }
        let error_log = format!("{d}/{name}-error.log");
        let log = self.dir.join(format!("{name}.out"));
        self.spawn(
            ns,
            "nginx",
            &["-c", &conf.to_string_lossy(), "-e", &error_log],
            &log,
        )
    }

    /// The temporary directories nginx's `http` module must be able to write,
    /// inside [`Lab::dir`].
    pub fn nginx_temp_paths(&self, name: &str) -> String {
        let d = self.dir.join(name);
        let d = d.display();
        format!(
            "client_body_temp_path {d}-body; proxy_temp_path {d}-proxy; fastcgi_temp_path {d}-fcgi;\n\
             uwsgi_temp_path {d}-uwsgi; scgi_temp_path {d}-scgi;\n"
        )
    }
}

impl<F: Failure> Drop for Lab<F> {
    fn drop(&mut self) {
        self.cleanup.run();
    }
}

fn output_in(ns: &str, cmd: &[&str]) -> Result<Output, Error> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .map_err(|e| Error(format!("ip netns exec {ns} {}: {e}", cmd.join(" "))))
}

/// Runs `program args…` in this namespace; a failure carries its standard
/// error.
pub fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error(format!("running {program}: {e}")))?;
    if !out.status.success() {
        return Err(Error(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs `f` on a thread inside network namespace `ns` (its name under
/// `/run/netns`); the calling thread stays where it is.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("opening namespace {ns}: {e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering namespace {ns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A listening TCP socket at `addr` inside network namespace `ns`, made in a
/// thread that enters it: the socket stays in that namespace while this
/// process serves it from its own.
pub fn bind_in_namespace(ns: &str, addr: std::net::SocketAddr) -> std::net::TcpListener {
    in_netns(ns, || {
        let l = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("binding {addr} in {ns}: {e}"));
        l.set_nonblocking(true).expect("a non-blocking listener");
        l
    })
}

/// Relays TCP from `listen` inside namespace `ns` to `target` in this
/// process's namespace, until the returned task is aborted: hosts of a lab
/// reach a server of the root namespace (a real API server on 127.0.0.1) at
/// their own `listen`, and a TLS name that says 127.0.0.1 still matches.
pub fn relay(
    ns: &str,
    listen: std::net::SocketAddr,
    target: std::net::SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let listener =
        tokio::net::TcpListener::from_std(bind_in_namespace(ns, listen)).expect("a tokio listener");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reporting lab hands a failed step back with the command, the
    /// namespace and what the command said; a panicking one stops with the
    /// same words; both undo what they built.
    #[test]
    fn a_failed_step_names_the_command_and_the_namespace_and_the_lab_is_undone() {
        if skip("lab_failed_step", unavailable()) {
            return;
        }
        let prefix = format!("ilblab{}", std::process::id());
        let mut lab = Lab::open(&prefix, Cleanup::default()).expect("a lab");
        let ns = lab.namespace("a").expect("a namespace");
        let err = lab
            .exec_ok(&ns, &["ip", "link", "set", "nosuchlink", "up"])
            .expect_err("no such link");
        let said = err.to_string();
        assert!(
            said.starts_with(&format!("in {ns}: ip link set nosuchlink up failed: ")),
            "{said}"
        );
        assert!(
            said.len() > format!("in {ns}: ip link set nosuchlink up failed: ").len(),
            "{said}"
        );
        let dir = lab.dir().to_path_buf();
        drop(lab);
        assert!(
            !Path::new(&format!("/run/netns/{ns}")).exists(),
            "{ns} left behind"
        );
        assert!(!dir.exists(), "{} left behind", dir.display());

        let panicked = std::panic::catch_unwind(|| {
            let mut lab = Lab::new("lab_failed_step").expect("labs run here");
            let ns = lab.namespace("b");
            (
                ns.clone(),
                lab.exec_ok(&ns, &["ip", "link", "set", "nosuchlink", "up"]),
            )
        });
        let message = panicked.expect_err("a failed step panics");
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            message.contains("ip link set nosuchlink up failed: "),
            "{message}"
        );
    }

    /// A kept lab stays up after it is dropped, until its namespaces are
    /// removed by hand.
    #[test]
    fn a_kept_lab_outlives_its_value() {
        if skip("lab_kept", unavailable()) {
            return;
        }
        let prefix = format!("ilbkeep{}", std::process::id());
        let cleanup = Cleanup::default();
        let mut lab = Lab::open(&prefix, cleanup.clone()).expect("a lab");
        let ns = lab.namespace("a").expect("a namespace");
        lab.keep();
        drop(lab);
        let kept = Path::new(&format!("/run/netns/{ns}")).exists();
        let _ = run("ip", &["netns", "del", &ns]);
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&prefix));
        assert!(kept, "{ns} went with the lab although it was kept");
    }
}
