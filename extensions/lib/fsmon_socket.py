"""Talking to the fsmon daemon's control socket safely: shared by every script in extensions/.

The scripts find this module through `../lib` relative to their own file; keep the
extensions/ tree together when you copy it.

Which socket, as the fsmon CLI chooses it:
  --socket PATH, else [socket].path of the config, else the default of the mode:
  - system mode ($FSMON_MODE=system, or root not through sudo and no --config/$FSMON_CONFIG):
    config /etc/fsmon/fsmon.toml, socket /run/fsmon/fsmon.sock;
  - user mode: config ~/.config/fsmon/fsmon.toml (of the user who ran sudo), socket
    /run/fsmon/fsmon-<UID>.sock.
Before a byte is sent, the peer is checked (SO_PEERCRED): only root or the user may serve it.
"""
import os
import pwd
import socket
import struct
import unicodedata

SYSTEM_CONFIG = "/etc/fsmon/fsmon.toml"
SYSTEM_SOCKET = "/run/fsmon/fsmon.sock"
USER_SOCKET = "/run/fsmon/fsmon-<UID>.sock"
SOCKET_HELP = ("daemon socket (default: [socket].path of the config, else /run/fsmon/fsmon.sock "
               "in system mode, /run/fsmon/fsmon-<UID>.sock in user mode)")
CONFIG_HELP = ("fsmon config (default: $FSMON_CONFIG, else /etc/fsmon/fsmon.toml in system mode, "
               "~/.config/fsmon/fsmon.toml in user mode)")


def user_uid():
    """The user the daemon works for, as the CLI sees it: SUDO_UID, else ours."""
    return int(os.environ.get("SUDO_UID", os.getuid()))


def system_mode(explicit_config):
    """The CLI's rule: $FSMON_MODE, else root's own commands without an explicit config."""
    mode = os.environ.get("FSMON_MODE", "")
    if mode in ("system", "user"):
        return mode == "system"
    if mode:
        raise SystemExit(f"FSMON_MODE is '{mode}': expected system or user")
    return os.geteuid() == 0 and "SUDO_UID" not in os.environ and not explicit_config


class Places:
    """Where the fsmon CLI looks for its files (fsmon/src/user.rs, `TargetUser`): the system's
    places, the sudo user's home from the password database, or (not through sudo) the
    caller's own $HOME and $XDG_*_HOME."""

    def __init__(self, config=None):
        explicit = config or os.environ.get("FSMON_CONFIG") or None
        self.uid = user_uid()
        self.home = pwd.getpwuid(self.uid).pw_dir
        self.system = system_mode(explicit is not None)
        own_env = "SUDO_UID" not in os.environ or os.geteuid() != 0
        if own_env and os.path.isabs(os.environ.get("HOME", "")):
            self.home = os.environ["HOME"]

        def xdg(var, fallback):
            value = os.environ.get(var, "") if own_env else ""
            return value if os.path.isabs(value) else os.path.join(self.home, fallback)

        if self.system:
            self.config = explicit or SYSTEM_CONFIG
            self.socket, self.log_dir = SYSTEM_SOCKET, "/var/log/fsmon"
        else:
            self.config = explicit or os.path.join(xdg("XDG_CONFIG_HOME", ".config"), "fsmon/fsmon.toml")
            self.socket, self.log_dir = USER_SOCKET, os.path.join(xdg("XDG_STATE_HOME", ".local/state"), "fsmon")

    def setting(self, section, key, default):
        """`[section] key` of the config file if it sets it, else `default`; `~` and <UID> expanded."""
        import tomllib

        value = default
        if os.path.exists(self.config):
            with open(self.config, "rb") as f:
                value = tomllib.load(f).get(section, {}).get(key, default)
        value = value.replace("<UID>", str(self.uid))
        return self.home + value[1:] if value == "~" or value.startswith("~/") else value


def socket_path(args):
    """The socket `args` (with .socket and .config) points at; see the module's docstring."""
    if args.socket:
        return args.socket
    places = Places(args.config)
    return places.setting("socket", "path", places.socket)


class PeerError(ValueError):
    pass


def check_peer(sock, path, uid):
    """Refuses a socket served by anyone but root or `uid` (SO_PEERCRED), before anything is
    sent: another local user listening there would be standing in for the daemon."""
    _pid, peer, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if peer in (0, uid):
        return
    try:
        owner = f"user {pwd.getpwuid(peer).pw_name} (uid {peer})"
    except KeyError:
        owner = f"uid {peer}"
    raise PeerError(f"refusing {path}: it is served by {owner}, not by root or uid {uid}: "
                    "another user may be standing in for the fsmon daemon; nothing was sent")


def connect(path, timeout):
    """A connected, peer-checked socket (raises OSError, TimeoutError or PeerError)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        check_peer(sock, path, user_uid())
    except BaseException:
        sock.close()
        raise
    return sock


def escape(text):
    """The daemon's text with control characters escaped, for a terminal."""
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cc" else c for c in str(text))
