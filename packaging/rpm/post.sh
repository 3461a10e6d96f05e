# tailrace %post: the state directory; on first install, the unit is
# preset (the distribution's policy says whether it is enabled), not started:
# the broker address in /etc/tailrace/tailrace.yaml needs editing first.
if [ ! -d /var/lib/tailrace ]; then
    install -d -o tailrace -g tailrace -m 0750 /var/lib/tailrace
fi
# The config may hold secrets: readable by root and the agent only.
if [ -f /etc/tailrace/tailrace.yaml ]; then
    chgrp tailrace /etc/tailrace/tailrace.yaml
    chmod 0640 /etc/tailrace/tailrace.yaml
fi
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl --no-reload preset tailrace.service >/dev/null 2>&1 || :
    fi
fi
exit 0
