# tailrace %postun: after an upgrade, restart the service if it was running.
# On erase, /etc/tailrace goes if it is empty (rpm keeps an edited config as
# tailrace.yaml.rpmsave); /var/lib/tailrace (it may hold events not yet
# delivered) and the tailrace user stay, as rpm has no purge.
if [ "$1" -eq 0 ]; then
    rmdir /etc/tailrace 2>/dev/null || :
fi
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart tailrace.service >/dev/null 2>&1 || :
    fi
fi
exit 0
