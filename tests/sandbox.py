"""Run a command in an image's root file system as the Kubernetes Deployment runs the container.

    python3 tests/sandbox.py --root DIR --user UID:GID [--netns FILE] [--workdir DIR] \\
        [--env NAME=VALUE ...] -- COMMAND [ARG ...]

`podman run` cannot start containers on the CI machines (no OCI runtime there can set the
container's rlimits), and `buildah run --isolation chroot` leaves the root writable, keeps
CAP_SETUID in the bounding set and does not set no_new_privs. This script (standard library
only, run as root) gives COMMAND what deploy/kubernetes/deployment.yaml asks for:

    readOnlyRootFilesystem: true       the root is DIR, bind-mounted read-only
    runAsUser / runAsGroup             --user UID:GID, no supplementary groups
    allowPrivilegeEscalation: false    no_new_privs
    capabilities: drop: [ALL]          empty bounding, permitted, effective, inheritable and
                                       ambient capability sets

and what a container runtime mounts for it: /proc, and a read-only /dev holding only null,
zero, full, random and urandom. No /tmp or any other writable place. It joins the network
namespace FILE (e.g. /run/netns/NAME from `ip netns add NAME`), where the command can listen
on its fixed port. It then replaces itself by COMMAND, looked up in the PATH of the --env given
(the image's environment): the pid the caller started is the command's.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
DEVICES = ("null", "zero", "full", "random", "urandom")

libc = ctypes.CDLL(None, use_errno=True)


def call(what: str, result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str | Path, fstype: str | None, flags: int, data: str | None = None) -> None:
    def b(s: str | Path | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    call(f"mount {target}", libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data)))


def prctl(option: int, arg: int, what: str) -> None:
    call(what, libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)))


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def clear_capabilities() -> None:
    """Empty every capability set of this process: bounding, ambient, then (after the uid change
    has emptied permitted and effective) inheritable."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap, f"drop capability {cap} from the bounding set")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clear the ambient capabilities")


def clear_inheritable() -> None:
    data = (CapData * 2)()  # all zero
    call("capset", libc.capset(ctypes.byref(CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), data))


def prepare_root(root: Path) -> None:
    """In a mount namespace of this process only: root read-only, /proc, a read-only /dev."""
    call("unshare the mount namespace", libc.unshare(CLONE_NEWNS))
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    mount(str(root), root, None, MS_BIND | MS_REC)
    mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    mount("proc", root / "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = root / "dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    for name in DEVICES:
        (dev / name).touch()
        mount(f"/dev/{name}", dev / name, None, MS_BIND)
    mount(None, dev, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the image's root file system (buildah mount)")
    parser.add_argument("--user", required=True, help="UID:GID, numeric")
    parser.add_argument("--netns", help="network namespace file to join (default: this process's)")
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE, the command's whole environment")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    uid, gid = (int(n) for n in args.user.split(":"))
    env = dict(e.split("=", 1) for e in args.env)
    if args.netns:
        fd = os.open(args.netns, os.O_RDONLY)
        call(f"join the network namespace {args.netns}", libc.setns(fd, CLONE_NEWNET))
        os.close(fd)
    prepare_root(args.root.resolve())
    os.chroot(args.root.resolve())
    os.chdir(args.workdir)
    clear_capabilities()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # leaving uid 0 empties the permitted and effective sets
    clear_inheritable()
    prctl(PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs")
    os.execvpe(args.command[0], args.command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
