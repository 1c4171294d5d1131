"""Which file system a path lives on, and whether it is a network one (where `flock` may not reach other hosts).

Read from the kernel's mount table; nothing here locks or writes anything.
"""

from __future__ import annotations

import os
from pathlib import Path

# File systems whose locks may not reach other hosts. Cluster file systems with a distributed lock manager
# (gfs2, ocfs2) lock across hosts and are not listed.
NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs", "gpfs", "beegfs", "fuse"}
)
# FUSE file systems that live on this machine (their locks are this kernel's): not warned about.
LOCAL_FUSE_FILE_SYSTEMS = frozenset({"fuseblk", "fuse.fuse-overlayfs", "fuse.lxcfs", "fuse.squashfuse"})
MOUNT_INFO = Path("/proc/self/mountinfo")


def file_system_type(path: Path, mount_info: Path | None = None) -> str | None:
    """The type of the file system `path` lives on ("ext4", "nfs4", "fuse.sshfs"), from the kernel's mount
    table (`mount_info`, default /proc/self/mountinfo), matched by device number; None where that table
    cannot be read."""
    try:
        device = os.stat(path).st_dev
        lines = (mount_info or MOUNT_INFO).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in lines:
        # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue": the device is
        # the third field, the type follows the "-" that ends the optional fields.
        fields = line.split()
        if len(fields) > 2 and fields[2] == wanted and "-" in fields[3:]:
            after = fields.index("-", 3) + 1
            if after < len(fields):
                return fields[after]
    return None


def is_network_file_system(kind: str | None) -> bool:
    if kind is None or kind in LOCAL_FUSE_FILE_SYSTEMS:
        return False
    return kind in NETWORK_FILE_SYSTEMS or kind.split(".")[0] in NETWORK_FILE_SYSTEMS
