# tailrace %post: the state directory; on first install, the unit is
# preset (the distribution's policy says whether it is enabled), not started:
# the broker address in /etc/tailrace/tailrace.yaml needs editing first.
if [ ! -d /var/lib/tailrace ]; then
    install -d -o tailrace -g tailrace -m 0750 /var/lib/tailrace
fi
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl --no-reload preset tailrace.service >/dev/null 2>&1 || :
    fi
fi
exit 0
