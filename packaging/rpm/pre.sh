# tailrace %pre: the system user and group tailrace (home and state directory
# /var/lib/tailrace), a member of adm so it may read /var/log and of
# systemd-journal so it may read the journal.
if ! getent group tailrace >/dev/null; then
    groupadd --system tailrace
fi
if ! getent passwd tailrace >/dev/null; then
    useradd --system --gid tailrace --home-dir /var/lib/tailrace --no-create-home \
        --shell /sbin/nologin --comment "tailrace log agent" tailrace
fi
if getent group adm >/dev/null; then
    usermod --append --groups adm tailrace
fi
if getent group systemd-journal >/dev/null; then
    usermod --append --groups systemd-journal tailrace
fi
exit 0
