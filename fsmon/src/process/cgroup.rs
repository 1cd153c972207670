//! Which cgroup, and which container, a process ran in.
//!
//! The eBPF record holds the process's cgroup v2 id (`bpf_get_current_cgroup_id`
//! at fork and exec): the kernfs id of its cgroup directory in the unified
//! hierarchy. That id is also a file handle on the cgroup2 filesystem
//! (`FILEID_KERNFS`), so [`CgroupNames`] turns it into a path with one
//! `open_by_handle_at` on a cgroup2 mount, without walking the hierarchy.
//! Kernfs ids are 64-bit and never reused, so an answer, once found, is
//! valid forever and the cache needs no invalidation, only a size bound.
//!
//! The container is read off the path by the naming schemes of the
//! runtimes (see [`container_of`]): the cgroup is the one thing every
//! runtime sets up and a process inside cannot change.
use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{Arc, OnceLock},
};

/// What the log says about a process's cgroup.
#[derive(Debug, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The cgroup v2 path (`/system.slice/foo.service`, `/` for the root),
    /// or `#<id>` when the cgroup no longer exists (or no cgroup2 mount is
    /// reachable) and only its id is known.
    pub path: Box<str>,
    /// The container's id when the path follows a container runtime's
    /// naming scheme; `None` for host processes.
    pub container: Option<Box<str>>,
}

impl CgroupInfo {
    fn from_path(path: String) -> Self {
        let container = container_of(&path).map(|c| c.id.into());
        Self {
            path: path.into(),
            container,
        }
    }
}

/// A cache entry cap: far more cgroups than a host runs at once; when it is
/// reached the cache starts over (entries never go stale, so this only
/// bounds memory).
const MAX_ENTRIES: usize = 16_384;

/// cgroup id -> [`CgroupInfo`], resolved through a cgroup2 mount.
pub struct CgroupNames {
    /// The cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
    /// hybrid hierarchy), opened once.
    mount: Option<(OwnedFd, PathBuf)>,
    cache: HashMap<u64, Arc<CgroupInfo>>,
}

impl CgroupNames {
    /// Finds the cgroup2 mount; without one, every id is reported as `#<id>`.
    pub fn open() -> Self {
        let mount = find_cgroup2_mount().and_then(|p| {
            let c = CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
            // SAFETY: a valid C string; the result is checked.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            // SAFETY: a descriptor we own from here on.
            (fd >= 0).then(|| (unsafe { OwnedFd::from_raw_fd(fd) }, p))
        });
        Self {
            mount,
            cache: HashMap::new(),
        }
    }

    /// Where cgroup paths are read, if anywhere (for `health`).
    pub fn mount_path(&self) -> Option<&std::path::Path> {
        self.mount.as_ref().map(|(_, p)| p.as_path())
    }

    /// The cgroup of id `id`; `None` for id 0 (not known).
    pub fn get(&mut self, id: u64) -> Option<Arc<CgroupInfo>> {
        if id == 0 {
            return None;
        }
        if let Some(info) = self.cache.get(&id) {
            return Some(info.clone());
        }
        let info = Arc::new(match self.resolve(id) {
            Some(path) => CgroupInfo::from_path(path),
            None => CgroupInfo {
                path: format!("#{id}").into(),
                container: None,
            },
        });
        if self.cache.len() >= MAX_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(id, info.clone());
        Some(info)
    }

    /// The path of cgroup `id` below the mount, through its file handle.
    fn resolve(&self, id: u64) -> Option<String> {
        let (mount, mount_path) = self.mount.as_ref()?;
        let dir = open_by_kernfs_id(mount, id)?;
        let full = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
        let rel = full.strip_prefix(mount_path).ok()?;
        let rel = rel.to_str()?;
        Some(format!("/{rel}"))
    }
}

/// The cgroup v2 id of a running process, as the eBPF programs would have
/// recorded it (for processes seeded from `/proc` and the `/proc`
/// fallback): the inode number of its cgroup directory. 0 when unknown.
pub fn id_of_process(tgid: u32) -> u64 {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    let Some(mount) = MOUNT.get_or_init(find_cgroup2_mount) else {
        return 0;
    };
    let Ok(own) = fs::read_to_string(format!("/proc/{tgid}/cgroup")) else {
        return 0;
    };
    own.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|p| fs::metadata(mount.join(p.trim_start_matches('/'))).ok())
        .map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// `FILEID_KERNFS` from `<linux/exportfs.h>`: a kernfs node by its 64-bit id.
const FILEID_KERNFS: i32 = 0xfe;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

fn open_by_kernfs_id(mount: &OwnedFd, id: u64) -> Option<OwnedFd> {
    let mut h = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `h` has the layout of `struct file_handle` with 8 bytes of
    // f_handle; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut h as *mut KernfsHandle,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a descriptor we own from here on.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The mount point of the cgroup2 filesystem, from /proc/self/mountinfo.
fn find_cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // `36 35 0:30 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw`
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 4 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A container found in a cgroup path.
#[derive(Debug, PartialEq, Eq)]
pub struct Container<'a> {
    /// `docker`, `podman`, `containerd`, `cri-o`, `kubepods`,
    /// `systemd-nspawn` or `lxc`.
    pub runtime: &'static str,
    /// The runtime's container id (64 hex digits), or the machine's or
    /// container's name for systemd-nspawn and LXC.
    pub id: &'a str,
}

/// The container a cgroup path belongs to, by the runtimes' naming schemes;
/// the component nearest the leaf wins (a container's own sub-cgroups, such
/// as systemd's inside it, belong to it):
///
/// | runtime | systemd cgroup driver | cgroupfs driver |
/// |---|---|---|
/// | docker | `docker-<id>.scope` | `/docker/<id>` |
/// | podman | `libpod-<id>.scope` | `/libpod_parent/libpod-<id>` |
/// | containerd (Kubernetes) | `cri-containerd-<id>.scope` | `/kubepods/<qos>/pod<uid>/<id>` |
/// | CRI-O | `crio-<id>.scope` | `/kubepods/<qos>/pod<uid>/<id>` |
/// | systemd-nspawn / machinectl | `/machine.slice/machine-<name>.scope` | |
/// | LXC | `/lxc.payload.<name>` | `/lxc/<name>` |
///
/// Runtime helpers (`libpod-conmon-…`, `crio-conmon-…`) are not containers.
pub fn container_of(path: &str) -> Option<Container<'_>> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, comp) in comps.iter().enumerate().rev() {
        let parent = if i > 0 { comps[i - 1] } else { "" };
        let name = comp.strip_suffix(".scope").unwrap_or(comp);
        for (prefix, runtime) in [
            ("docker-", "docker"),
            ("libpod-", "podman"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
        ] {
            if let Some(id) = name.strip_prefix(prefix)
                && is_container_id(id)
            {
                return Some(Container { runtime, id });
            }
        }
        if is_container_id(comp) {
            let runtime = match parent {
                "docker" => Some("docker"),
                p if p.starts_with("pod") && i >= 2 => Some("kubepods"),
                _ => None,
            };
            if let Some(runtime) = runtime {
                return Some(Container { runtime, id: comp });
            }
        }
        if parent == "machine.slice"
            && let Some(machine) = name.strip_prefix("machine-")
            && comp.ends_with(".scope")
            && !machine.is_empty()
        {
            return Some(Container {
                runtime: "systemd-nspawn",
                id: machine,
            });
        }
        if let Some(n) = comp.strip_prefix("lxc.payload.")
            && !n.is_empty()
        {
            return Some(Container {
                runtime: "lxc",
                id: n,
            });
        }
        if parent == "lxc" && i == 1 {
            return Some(Container {
                runtime: "lxc",
                id: comp,
            });
        }
    }
    None
}

/// 64 lowercase hex digits: the id docker, podman, containerd and CRI-O use.
fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0bd5af1b5054a57f64f028f8d69ed2fb8b43c1ef7f364160f923ffc9905def6b";

    fn c(path: &str) -> Option<(&'static str, String)> {
        container_of(path).map(|c| (c.runtime, c.id.to_string()))
    }

    #[test]
    fn runtimes_naming_schemes() {
        let id = ID.to_string();
        assert_eq!(
            c(&format!("/system.slice/docker-{ID}.scope")),
            Some(("docker", id.clone()))
        );
        assert_eq!(c(&format!("/docker/{ID}")), Some(("docker", id.clone())));
        assert_eq!(
            c(&format!("/machine.slice/libpod-{ID}.scope")),
            Some(("podman", id.clone()))
        );
        assert_eq!(
            c(&format!("/libpod_parent/libpod-{ID}")),
            Some(("podman", id.clone()))
        );
        assert_eq!(
            c(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_5678.slice/cri-containerd-{ID}.scope"
            )),
            Some(("containerd", id.clone()))
        );
        assert_eq!(
            c(&format!(
                "/kubepods.slice/kubepods-pod12.slice/crio-{ID}.scope"
            )),
            Some(("cri-o", id.clone()))
        );
        assert_eq!(
            c(&format!("/kubepods/burstable/pod9a8b-77/{ID}")),
            Some(("kubepods", id.clone()))
        );
        assert_eq!(
            c("/machine.slice/machine-web1.scope"),
            Some(("systemd-nspawn", "web1".into()))
        );
        assert_eq!(c("/lxc.payload.box1"), Some(("lxc", "box1".into())));
        assert_eq!(c("/lxc/box2"), Some(("lxc", "box2".into())));
    }

    #[test]
    fn sub_cgroups_of_a_container_belong_to_it() {
        assert_eq!(
            c(&format!("/system.slice/docker-{ID}.scope/init.scope")),
            Some(("docker", ID.to_string()))
        );
        assert_eq!(
            c("/machine.slice/machine-web1.scope/payload/system.slice/cron.service"),
            Some(("systemd-nspawn", "web1".into()))
        );
    }

    #[test]
    fn host_cgroups_and_runtime_helpers_are_not_containers() {
        for p in [
            "/",
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/docker.service",
            "/system.slice/containerd.service",
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("/kubepods.slice/crio-conmon-{ID}.scope"),
            // Not 64 hex digits.
            "/system.slice/docker-abc.scope",
            &format!("/docker/{}", ID.to_uppercase()),
            // A bare id outside a runtime's parent.
            &format!("/somewhere/{ID}"),
            "/machine.slice/machine-.scope",
        ] {
            assert_eq!(c(p), None, "{p}");
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }

    #[test]
    fn a_cgroup_id_resolves_to_its_path() {
        // Root can open handles and make cgroups; as another user this test
        // has nothing to check.
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let mut names = CgroupNames::open();
        let mount = names
            .mount_path()
            .expect("no cgroup2 mount found in /proc/self/mountinfo")
            .to_path_buf();
        let name = format!("fsmon-unit-{}", std::process::id());
        let dir = mount.join(&name);
        fs::create_dir(&dir).unwrap();
        let id = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&dir).unwrap());
        let info = names.get(id).unwrap();
        fs::remove_dir(&dir).unwrap();
        assert_eq!(&*info.path, format!("/{name}").as_str());
        assert_eq!(info.container, None);
        // Cached: the same answer after the cgroup is gone, same allocation.
        assert!(Arc::ptr_eq(&info, &names.get(id).unwrap()));
        // A gone (or never existing) cgroup is reported by number.
        let mut fresh = CgroupNames::open();
        assert_eq!(&*fresh.get(id).unwrap().path, format!("#{id}").as_str());
        assert_eq!(names.get(0), None);
    }

    #[test]
    fn a_process_cgroup_id_is_its_directory() {
        let mut names = CgroupNames::open();
        let id = id_of_process(std::process::id());
        assert_ne!(id, 0, "own cgroup id");
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        if nix::unistd::Uid::effective().is_root() {
            assert_eq!(&*names.get(id).unwrap().path, path);
        }
    }
}
