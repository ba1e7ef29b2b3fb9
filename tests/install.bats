#!/usr/bin/env bats
# install.bats - `make install` and `make uninstall` (PREFIX, DESTDIR and the other
# directory variables), the rendered systemd unit and the man page pibl(8).
#
# What it does: installs into a staging folder under $BATS_TEST_TMPDIR (DESTDIR)
# and checks the files, their modes and their rendered paths; runs the installed
# binary; verifies the unit with systemd-analyze when it is installed (after an
# install whose PREFIX is itself under the temp folder, since verify wants the
# binary at the unit's path); uninstalls and looks for leftovers. The man page is
# checked against pibl.cpp (every key of g_keys described, with the default that
# pibl_config_defaults sets) and linted with groff (and mandoc when present).
# What it refuses: it never installs outside $BATS_TEST_TMPDIR and never starts
# a service. The rendered pibl.service and pibl.8 at the top of the tree are
# build products (make clean removes them).

bats_require_minimum_version 1.5.0

PIBL_ROOT="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"
MAN_SRC="$PIBL_ROOT/docs/pibl.8.in"

setup() {
    # The directory variables are read from the environment (?=): a stray one
    # must not move the files these tests look for.
    unset PREFIX SBINDIR MANDIR SYSCONFDIR SYSTEMDDIR PIBL_USER CACHE_TTL INSTALL DESTDIR
    STAGE="$BATS_TEST_TMPDIR/stage"
}

# pmake ARGS... - make in the source tree, quietly, output kept for a failure.
pmake() {
    make -C "$PIBL_ROOT" --no-print-directory "$@"
}

# stage_install - make install DESTDIR=$STAGE PREFIX=/usr; fails the test if make fails.
stage_install() {
    run pmake install DESTDIR="$STAGE" PREFIX=/usr "$@"
    echo "$output"
    [ "$status" -eq 0 ]
}

# g_keys - the key names of pibl.cpp's g_keys table, one a line.
g_keys() {
    sed -n '/^static const struct key_spec g_keys\[\] = {/,/^};/s/^ *{ *"\([a-z_]*\)".*/\1/p' \
        "$PIBL_ROOT/pibl.cpp"
}

# key_paragraph KEY - the man page's entry for KEY (its .TP item up to the next
# item or section), joined on one line.
key_paragraph() {
    awk -v key="$1" '
        /^\.(TP|SS|SH)/ { if (on) exit; tp = ($1 == ".TP"); next }
        tp && ($1 == ".B" || $1 == ".BI" || $1 == ".BR") && $2 == key { on = 1 }
        tp { tp = 0 }
        on { printf "%s ", $0 }' "$MAN_SRC"
}

# key_default KEY - the default pibl_config_defaults() gives KEY, as the man page
# writes it (on/off, a number, a string); nothing when it is not a plain value.
key_default() {
    local field line value
    field=$(sed -n "s/^ *{ *\"$1\", *[A-Z_]*, *CFG(\([a-z_]*\)).*/\1/p" "$PIBL_ROOT/pibl.cpp")
    [ -n "$field" ] || return 0
    line=$(sed -n '/^pibl_config_defaults(/,/^}/p' "$PIBL_ROOT/pibl.cpp" | grep -E "cfg->$field( |,)" | head -n 1)
    if [[ $line =~ snprintf\(cfg-\>$field,.*\"(.*)\"\)\; ]]; then
        value=${BASH_REMATCH[1]}
    elif [[ $line =~ cfg-\>$field\ =\ ([0-9LL\ \<]+)\; ]]; then
        value=$((${BASH_REMATCH[1]//LL/}))
    elif [ -z "$line" ] && grep -Eq "\{ *\"$1\", *K_BOOL," "$PIBL_ROOT/pibl.cpp"; then
        value=0                                   # memset: a bool not set is off
    else
        return 0
    fi
    if grep -Eq "\{ *\"$1\", *K_BOOL," "$PIBL_ROOT/pibl.cpp"; then
        [ "$value" = 1 ] && value=on || value=off
    fi
    echo "$value"
}

@test "install: DESTDIR and PREFIX=/usr put the binary, the man page, the config and the unit, with their modes" {
    stage_install
    [ "$(stat -c %a "$STAGE/usr/sbin/pibl")" = 755 ]
    [ "$(stat -c %a "$STAGE/usr/share/man/man8/pibl.8")" = 644 ]
    [ "$(stat -c %a "$STAGE/usr/etc/pibl/pibl.cfg")" = 644 ]
    [ "$(stat -c %a "$STAGE/usr/lib/systemd/system/pibl.service")" = 644 ]
    cmp "$PIBL_ROOT/pibl" "$STAGE/usr/sbin/pibl"
    cmp "$PIBL_ROOT/pibl.cfg" "$STAGE/usr/etc/pibl/pibl.cfg"
    # Exactly these four files: pibl-origin (the test origin) is not installed.
    run find "$STAGE" -type f
    echo "$output"
    [ "${#lines[@]}" -eq 4 ]
    [ -z "$(find "$STAGE" -name 'pibl-origin*')" ]
}

@test "install: SBINDIR, MANDIR, SYSCONFDIR and SYSTEMDDIR move the files and the paths written in them" {
    stage_install SBINDIR=/opt/pb/bin MANDIR=/opt/pb/man SYSCONFDIR=/etc SYSTEMDDIR=/etc/systemd/system
    [ -x "$STAGE/opt/pb/bin/pibl" ]
    [ -f "$STAGE/opt/pb/man/man8/pibl.8" ]
    [ -f "$STAGE/etc/pibl/pibl.cfg" ]
    local unit=$STAGE/etc/systemd/system/pibl.service
    grep -qx 'ExecStart=/opt/pb/bin/pibl /etc/pibl/pibl.cfg 60' "$unit"
    grep -q '^\.I /etc/pibl/pibl.cfg$' "$STAGE/opt/pb/man/man8/pibl.8"
    grep -q '^\.I /etc/systemd/system/pibl.service$' "$STAGE/opt/pb/man/man8/pibl.8"
    [ "$(find "$STAGE" -type f | wc -l)" -eq 4 ]
}

@test "install: the unit has its paths filled in and passes systemd-analyze verify" {
    stage_install CACHE_TTL=45
    local unit=$STAGE/usr/lib/systemd/system/pibl.service
    cat "$unit"
    run ! grep -n '@[A-Z_]*@' "$unit"
    grep -qx 'ExecStartPre=/usr/sbin/pibl -t /usr/etc/pibl/pibl.cfg' "$unit"
    grep -qx 'ExecStart=/usr/sbin/pibl /usr/etc/pibl/pibl.cfg 45' "$unit"
    grep -qx 'WorkingDirectory=/var/lib/pibl' "$unit"    # ./cache and pibl.log live here
    grep -qx 'StateDirectory=pibl' "$unit"              # ... and systemd creates it
    grep -qx 'ReadWritePaths=/var/lib/pibl' "$unit"
    grep -qx 'User=pibl' "$unit"
    # shellcheck disable=SC2016  # $MAINPID is literal text of the unit
    grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$unit"
    grep -qx 'WantedBy=multi-user.target' "$unit"
    if ! command -v systemd-analyze >/dev/null; then
        skip "systemd-analyze not installed: the unit's lines were checked, verify not run"
    fi
    # verify checks that ExecStart's binary exists: install for real, under the temp folder.
    local prefix=$BATS_TEST_TMPDIR/prefix
    run pmake install PREFIX="$prefix"
    echo "$output"
    [ "$status" -eq 0 ]
    grep -qx "ExecStart=$prefix/sbin/pibl $prefix/etc/pibl/pibl.cfg 60" "$prefix/lib/systemd/system/pibl.service"
    run timeout 30 systemd-analyze verify "$prefix/lib/systemd/system/pibl.service"
    echo "$output"
    [ "$status" -eq 0 ]
    [ -z "$output" ]                    # unknown keys are only warnings (exit 0)
}

@test "install: the installed binary runs: -V prints pibl.h's version, -t accepts the installed config" {
    stage_install
    local version
    version=$(sed -n 's/^#define PIBL_VERSION *"\(.*\)"/\1/p' "$PIBL_ROOT/pibl.h")
    [ -n "$version" ]
    run "$STAGE/usr/sbin/pibl" -V
    [ "$status" -eq 0 ]
    [ "$output" = "pibl $version" ]
    run "$STAGE/usr/sbin/pibl" -t "$STAGE/usr/etc/pibl/pibl.cfg"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "pibl: $STAGE/usr/etc/pibl/pibl.cfg: OK" ]
    # The footer of the installed page carries the same version.
    grep -q "^\.TH PIBL 8 .* \"pibl $version\"" "$STAGE/usr/share/man/man8/pibl.8"
}

@test "install: a config already in place is kept; uninstall keeps it too when it was changed" {
    mkdir -p "$STAGE/usr/etc/pibl"
    printf 'backend = 127.0.0.1:9\n' >"$STAGE/usr/etc/pibl/pibl.cfg"
    stage_install
    [[ "$output" == *"kept the existing $STAGE/usr/etc/pibl/pibl.cfg"* ]]
    [ "$(cat "$STAGE/usr/etc/pibl/pibl.cfg")" = "backend = 127.0.0.1:9" ]
    run pmake uninstall DESTDIR="$STAGE" PREFIX=/usr
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"kept $STAGE/usr/etc/pibl/pibl.cfg (changed since install)"* ]]
    [ "$(cat "$STAGE/usr/etc/pibl/pibl.cfg")" = "backend = 127.0.0.1:9" ]
    run find "$STAGE" -type f
    [ "$output" = "$STAGE/usr/etc/pibl/pibl.cfg" ]
}

@test "uninstall: with the same variables it removes every file install put, and the pibl config folder" {
    stage_install
    [ "$(find "$STAGE" -type f | wc -l)" -eq 4 ]
    run pmake uninstall DESTDIR="$STAGE" PREFIX=/usr
    echo "$output"
    [ "$status" -eq 0 ]
    run find "$STAGE" -type f
    echo "$output"
    [ -z "$output" ]
    run find "$STAGE" -name '*pibl*'
    echo "$output"
    [ -z "$output" ]
    # A second uninstall finds nothing to remove and still succeeds.
    run pmake uninstall DESTDIR="$STAGE" PREFIX=/usr
    [ "$status" -eq 0 ]
}

@test "install: a placeholder the Makefile does not fill fails the render and leaves no file" {
    local work=$BATS_TEST_TMPDIR/tree
    mkdir -p "$work/scripts" "$work/docs"
    cp "$PIBL_ROOT/Makefile" "$PIBL_ROOT/pibl.h" "$work/"
    cp "$PIBL_ROOT/docs/pibl.8.in" "$work/docs/"
    { cat "$PIBL_ROOT/scripts/pibl.service"; echo 'Environment=X=@PIBL_NOT_A_VARIABLE@'; } \
        >"$work/scripts/pibl.service"
    run make -C "$work" --no-print-directory pibl.service
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"placeholder left"* ]]
    [ ! -e "$work/pibl.service" ]
    [ ! -e "$work/pibl.service.tmp" ]
    run make -C "$work" --no-print-directory pibl.8
    [ "$status" -eq 0 ]
}

@test "man page: every key of pibl.cpp's g_keys has an entry with its default" {
    local keys key para def n=0
    keys=$(g_keys)
    echo "keys: $keys"
    [ "$(wc -l <<<"$keys")" -ge 30 ]               # the parse found the table
    for key in $keys log_format error_log; do
        para=$(key_paragraph "$key")
        [ -n "$para" ] || { echo "no entry for $key"; return 1; }
        [[ $para == *Default* || $para == *Required* ]] || { echo "$key: no default: $para"; return 1; }
        def=$(key_default "$key")
        [ -n "$def" ] || continue
        # "Default" then the value, bold: ".BR 8080 ." or ".B 1073741824" or ".BR "127.0.0.1 ::1" ."
        [[ $para == *"Default .B $def "* || $para == *"Default .BR $def ."* ||
           $para == *"Default .BR \"$def\" ."* ]] || { echo "$key: default $def not in: $para"; return 1; }
        n=$((n + 1))
    done
    echo "defaults compared: $n"
    [ "$n" -ge 25 ]
}

@test "man page: the installed page renders with groff -ww (and mandoc -Tlint when present) without a warning" {
    stage_install
    local page=$STAGE/usr/share/man/man8/pibl.8
    run ! grep -n '@[A-Z_]*@' "$page"
    command -v groff >/dev/null || { echo "groff is not installed (.ci/run installs groff-base)"; return 1; }
    run groff -man -Tutf8 -ww -z "$page"
    echo "$output"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    run groff -man -Tutf8 -ww -P -cbou "$page"
    [ "$status" -eq 0 ]
    for s in NAME SYNOPSIS DESCRIPTION OPTIONS CONFIGURATION SIGNALS FILES "EXIT STATUS" EXAMPLES "SEE ALSO"; do
        grep -qx "$s" <<<"$output" || { echo "section $s missing"; return 1; }
    done
    [[ "$output" == *"SIGHUP"* && "$output" == *"SIGUSR1"* && "$output" == *"SIGTERM"* ]]
    if command -v mandoc >/dev/null; then
        run mandoc -Tlint -W warning "$page"
        echo "$output"
        [ "$status" -eq 0 ]
        [ -z "$output" ]
    else
        echo "# mandoc not installed: groff's check only" >&3
    fi
}

@test "man page: the configuration in EXAMPLES passes pibl -t" {
    [ -x "$PIBL_ROOT/pibl" ] || { echo "run make first"; return 1; }
    local cfg=$BATS_TEST_TMPDIR/example.cfg
    awk '/^A configuration with/ { on = 1 } on && /^\.nf/ { body = 1; next } body && /^\.fi/ { exit } body' \
        "$MAN_SRC" >"$cfg"
    cat "$cfg"
    grep -q '^backend = ' "$cfg"
    run "$PIBL_ROOT/pibl" -t "$cfg"
    echo "$output"
    [ "$status" -eq 0 ]
}
