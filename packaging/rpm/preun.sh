# tailrace %preun: on erase (not upgrade), stop and disable the service.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable --now tailrace.service >/dev/null 2>&1 || :
fi
exit 0
