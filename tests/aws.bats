#!/usr/bin/env bats
# aws.bats - offline tests of scripts/aws-deploy.sh, aws-status.sh and aws-destroy.sh.
#
# What it does: puts tests/aws-stub first on PATH, so `aws` is a stand-in that
# records every call and answers like EC2 from a state folder (key pairs,
# security groups, instances, client tokens), and `curl` answers 200 without any
# network. Then it checks the calls the scripts make (rules, IMDSv2, tags,
# counts, client tokens), re-runs, the destroy order, a deploy after a destroy,
# the failures a user meets first, and the rendered user-data: each script is
# decompressed and run in dry-run mode under a scratch root, which recreates the
# web app (compared byte for byte with www/), builds PIBL, checks the generated
# pibl.cfg with ./pibl -t and validates the systemd unit.
# One optional test drives the real AWS CLI against a local EC2 emulator
# (moto_server on 127.0.0.1) when one is installed.
# What it refuses: any real network address. Every address the stub hands out
# is private (172.31.0.0/16) or documentation-only (203.0.113.0/24), and only
# the curl stub ever sees them.

REPO="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"
DEPLOY="$REPO/scripts/aws-deploy.sh"
STATUS="$REPO/scripts/aws-status.sh"
DESTROY="$REPO/scripts/aws-destroy.sh"
PIBL="$REPO/pibl"

setup() {
    export AWS_STUB_DIR="$BATS_TEST_TMPDIR/aws-state"
    mkdir -p "$AWS_STUB_DIR" "$BATS_TEST_TMPDIR/home"
    export HOME="$BATS_TEST_TMPDIR/home"
    export PATH="$BATS_TEST_DIRNAME/aws-stub:$PATH"
    export PIBL_POLL_SECONDS=0 PIBL_DELETE_TRIES=3
    unset AWS_ENDPOINT_URL AWS_REGION AWS_DEFAULT_REGION AWS_PROFILE \
        PIBL_PROJECT PIBL_PORT PIBL_TTL PIBL_GIT_URL PIBL_GIT_REF PIBL_KEY_NAME \
        PIBL_CLIENT_CIDR PIBL_INSTANCE_TYPE PIBL_OS PIBL_AMI_PARAM PIBL_AWS_CLI PIBL_SOURCE PIBL_SSH \
        GIT_CONFIG_COUNT
    SRC="$BATS_TEST_TMPDIR/src"
    WWW="$BATS_TEST_TMPDIR/www"
    make_fixture_source "$SRC"
    make_fixture_www "$WWW"
    export PIBL_SOURCE_DIR="$SRC" PIBL_WWW_DIR="$WWW"
}

teardown() {
    if [ -n "${MOTO_PID:-}" ]; then
        kill -- "-$MOTO_PID" 2>/dev/null || kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
}

# make_fixture_source DIR - a tiny source tree that builds a `pibl` accepting -t.
make_fixture_source() {
    mkdir -p "$1"
    printf 'pibl: main.cpp\n\t$(CXX) -o pibl main.cpp\n' >"$1/Makefile"
    cat >"$1/main.cpp" <<'EOF'
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "-t") == 0) { printf("pibl: %s: OK\n", argv[2]); return 0; }
    return 2;
}
EOF
}

# make_fixture_www DIR - a site with the awkward cases: a sub-folder, a binary
# file with NUL bytes, a file without a final newline, a name with a space.
make_fixture_www() {
    mkdir -p "$1/css" "$1/img"
    printf '<!doctype html>\n<title>PIBL</title>\n<h1>PIBL</h1>\n' >"$1/index.html"
    printf 'body { color: #333; }\n' >"$1/css/style.css"
    printf '\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01' >"$1/img/logo.png"
    printf 'no newline at the end' >"$1/plain.txt"
    printf 'spaced\n' >"$1/with space.html"
}

# calls_of PATTERN - the recorded aws calls matching an extended regex.
calls_of() {
    grep -E -- "$1" "$AWS_STUB_DIR/calls" || true
}

# n_calls PATTERN - how many recorded aws calls match.
n_calls() {
    calls_of "$1" | grep -c . || true
}

# ids_with_role ROLE - instance ids the stub holds with that Role tag.
ids_with_role() {
    grep -l "^tag:Role=$1\$" "$AWS_STUB_DIR"/inst/i-* 2>/dev/null | xargs -r -n 1 basename | sort
}

# live_count - instances not terminated.
live_count() {
    grep -L '^state=terminated$' "$AWS_STUB_DIR"/inst/i-* 2>/dev/null | grep -c . || true
}

# line_no PATTERN - the number of the first recorded call matching PATTERN.
line_no() {
    grep -n -E -- "$1" "$AWS_STUB_DIR/calls" | head -n 1 | cut -d : -f 1
}

# userdata_of ROLE - the user-data (gzip) of the first instance with that role.
userdata_of() {
    echo "$AWS_STUB_DIR/userdata/$(ids_with_role "$1" | head -n 1)"
}

# The origin URL of the test checkouts: never contacted (see clone_from).
ORIGIN_URL=https://git.example.invalid/pibl.git

# make_checkout DIR BARE - make DIR a git checkout on branch main with one
# commit of its files, a bare clone of it at BARE, and ORIGIN_URL as origin.
make_checkout() {
    git -C "$1" init -q -b main
    git -C "$1" -c user.name=t -c user.email=t@t add -A
    git -C "$1" -c user.name=t -c user.email=t@t commit -q -m source
    git clone -q --bare "$1" "$2"
    git -C "$1" remote add origin "$ORIGIN_URL"
}

# clone_from BARE - from now on in this test, git fetches ORIGIN_URL from the
# local bare repository BARE (url.<base>.insteadOf, through the environment).
clone_from() {
    export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0="url.file://$1.insteadOf" GIT_CONFIG_VALUE_0="$ORIGIN_URL"
}

# dry_run_userdata GZ ROOT - run a rendered user-data script in dry-run mode
# under the scratch root ROOT (no packages, users or systemd).
dry_run_userdata() {
    mkdir -p "$2"
    gzip -dc "$1" >"$2.sh"
    PIBL_UD_ROOT="$2" PIBL_UD_DRY_RUN=1 bash "$2.sh"
}

# verify_unit FILE ROOT - validate a rendered unit: systemd-analyze verify when
# present (after pointing its paths into ROOT, since verify checks that the
# binary exists), otherwise a structural check. Echoes which one ran.
verify_unit() {
    local unit=$1 root=$2 dir out
    dir=$(mktemp -d "$BATS_TEST_TMPDIR/unit.XXXX")
    sed -e "s|/opt/pibl/bin/pibl|$root/opt/pibl/bin/pibl|g" -e "s|/var/lib/pibl|$root/var/lib/pibl|g" \
        "$unit" >"$dir/pibl.service"
    if command -v systemd-analyze >/dev/null 2>&1; then
        echo "unit check: systemd-analyze verify"
        out=$(systemd-analyze verify "$dir/pibl.service" 2>&1) || { echo "$out"; return 1; }
        # verify only warns (exit 0) about unknown keys: any output is a failure.
        [ -z "$out" ] || { echo "$out"; return 1; }
    else
        echo "unit check: structural (systemd-analyze not installed)"
        awk '
            /^[ \t]*(#|$)/ { next }
            /^\[(Unit|Service|Install)\]$/ { sec = $0; seen[sec] = 1; next }
            /^\[/ { print "unknown section " $0; bad = 1; next }
            sec == "" || $0 !~ /^[A-Za-z]+=/ { print "bad line: " $0; bad = 1 }
            END {
                if (!seen["[Unit]"] || !seen["[Service]"] || !seen["[Install]"]) { print "missing section"; bad = 1 }
                exit bad
            }' "$dir/pibl.service" || return 1
        grep -Eq '^ExecStart=/[^ ]+ pibl\.cfg [0-9]+$' "$dir/pibl.service"
        grep -q '^WantedBy=multi-user.target$' "$dir/pibl.service"
    fi
}

@test "deploy -h explains every flag and its environment variable, with no AWS call" {
    run "$DEPLOY" -h
    [ "$status" -eq 0 ]
    for word in --region AWS_REGION --instance-type PIBL_INSTANCE_TYPE --key-name PIBL_KEY_NAME \
        --client-cidr PIBL_CLIENT_CIDR --ttl PIBL_TTL --project PIBL_PROJECT --git-url AWS_ENDPOINT_URL; do
        [[ "$output" == *"$word"* ]] || { echo "help lacks $word"; return 1; }
    done
    [ ! -s "$AWS_STUB_DIR/calls" ]
    run "$DESTROY" -h
    [ "$status" -eq 0 ]
    [[ "$output" == *--project* ]]
    run "$STATUS" -h
    [ "$status" -eq 0 ]
    [[ "$output" == *--region* ]]
}

@test "missing credentials: a clear message after the one sts call, nothing created" {
    touch "$AWS_STUB_DIR/no-credentials"
    run "$DEPLOY"
    [ "$status" -ne 0 ]
    [[ "$output" == *"credentials were not accepted"* ]]
    [[ "$output" == *"aws configure"* ]]
    [[ "$output" == *AWS_ACCESS_KEY_ID* ]]
    [ "$(grep -c . "$AWS_STUB_DIR/calls")" -eq 1 ]
    [ "$(n_calls 'sts get-caller-identity')" -eq 1 ]
    run "$DESTROY" --yes
    [ "$status" -ne 0 ]
    [[ "$output" == *"credentials"* ]]
    run "$STATUS"
    [ "$status" -ne 0 ]
    [[ "$output" == *"credentials"* ]]
}

@test "missing AWS CLI: says so and how to install it" {
    PIBL_AWS_CLI=/nonexistent/aws run "$DEPLOY"
    [ "$status" -ne 0 ]
    [[ "$output" == *"AWS CLI"*"not installed"* ]]
    [ ! -s "$AWS_STUB_DIR/calls" ]
}

@test "bad flags are refused before any AWS call" {
    for args in "--client-cidr 10.0.0.0" "--client-cidr 300.1.1.1/32" "--ttl -1" "--ttl 31536001" \
        "--port 0" "--port 22" "--project Bad_Name" "--os plan9" "--git-url ssh://host/repo" "--bogus"; do
        # shellcheck disable=SC2086
        run "$DEPLOY" $args
        [ "$status" -ne 0 ] || { echo "accepted: $args"; return 1; }
        [[ "$output" == *error* ]]
    done
    [ ! -s "$AWS_STUB_DIR/calls" ]
}

@test "no default VPC: a clear message, nothing created" {
    touch "$AWS_STUB_DIR/no-default-vpc"
    run "$DEPLOY"
    [ "$status" -ne 0 ]
    [[ "$output" == *"no default VPC"*"create-default-vpc"* ]]
    [ "$(n_calls 'create-|import-|run-instances|authorize')" -eq 0 ]
}

@test "deploy makes the expected calls: credentials first, rules, IMDSv2, tags, counts" {
    run "$DEPLOY" --region eu-west-1 --client-cidr 198.51.100.0/24 --port 8081 --project demo \
        --instance-type t3.small --ttl 120
    echo "$output"
    [ "$status" -eq 0 ]
    # The credentials are checked before any EC2 call; every call names the region.
    [ "$(line_no .)" -eq "$(line_no 'sts get-caller-identity')" ]
    [ "$(n_calls .)" -eq "$(n_calls -- '--region eu-west-1 ')" ]
    [ "$(n_calls 'ec2 describe-vpcs --filters Name=is-default,Values=true')" -eq 1 ]
    [ "$(n_calls 'ssm get-parameter --name /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64')" -eq 1 ]
    [ "$(n_calls 'import-key-pair --key-name demo-key .*Key=Project,Value=demo')" -eq 1 ]
    [ -f "$HOME/.ssh/demo-key.pem" ]
    [ "$(stat -c %a "$HOME/.ssh/demo-key.pem")" = 600 ]
    # Two groups, tagged with project and role.
    [ "$(n_calls 'create-security-group --group-name demo-pibl .*Key=Project,Value=demo},\{Key=Role,Value=pibl}')" -eq 1 ]
    [ "$(n_calls 'create-security-group --group-name demo-web .*Key=Project,Value=demo},\{Key=Role,Value=web}')" -eq 1 ]
    local sg_pibl sg_web
    sg_pibl=$(grep -l '^name=demo-pibl$' "$AWS_STUB_DIR"/sg/* | xargs basename)
    sg_web=$(grep -l '^name=demo-web$' "$AWS_STUB_DIR"/sg/* | xargs basename)
    # PIBL: its port and SSH from the client CIDR, nothing else.
    [ "$(n_calls "authorize-security-group-ingress --group-id $sg_pibl --protocol tcp --port 8081 --cidr 198.51.100.0/24$")" -eq 1 ]
    [ "$(n_calls "authorize-security-group-ingress --group-id $sg_pibl --protocol tcp --port 22 --cidr 198.51.100.0/24$")" -eq 1 ]
    [ "$(n_calls "authorize-security-group-ingress --group-id $sg_pibl ")" -eq 2 ]
    # Web servers: HTTP from PIBL's group only, never from a CIDR.
    [ "$(n_calls "authorize-security-group-ingress --group-id $sg_web --protocol tcp --port 80 --source-group $sg_pibl$")" -eq 1 ]
    [ "$(n_calls "authorize-security-group-ingress --group-id $sg_web .*--cidr")" -eq 0 ]
    [ "$(grep -c '^rule=' "$AWS_STUB_DIR/sg/$sg_web")" -eq 1 ]
    # Three web servers in one launch, one PIBL; IMDSv2, tags, client tokens.
    [ "$(n_calls run-instances)" -eq 2 ]
    [ "$(n_calls "run-instances .*--instance-type t3.small --count 3 --key-name demo-key --security-group-ids $sg_web ")" -eq 1 ]
    [ "$(n_calls "run-instances .*--count 1 --key-name demo-key --security-group-ids $sg_pibl ")" -eq 1 ]
    [ "$(n_calls 'run-instances .*--metadata-options HttpTokens=required,HttpEndpoint=enabled')" -eq 2 ]
    [ "$(n_calls 'run-instances .*ResourceType=instance,Tags=\[\{Key=Name,Value=demo-web},\{Key=Project,Value=demo},\{Key=Role,Value=web}\]')" -eq 1 ]
    [ "$(n_calls 'run-instances .*ResourceType=instance,Tags=\[\{Key=Name,Value=demo-pibl},\{Key=Project,Value=demo},\{Key=Role,Value=pibl},\{Key=Port,Value=8081}')" -eq 1 ]
    [ "$(n_calls 'run-instances .*ResourceType=volume,Tags=')" -eq 2 ]
    [ "$(n_calls "run-instances .*--client-token demo-web-$sg_pibl-0 ")" -eq 1 ]
    [ "$(n_calls "run-instances .*--client-token demo-pibl-$sg_pibl-0 ")" -eq 1 ]
    [ "$(n_calls 'run-instances .*--user-data fileb://')" -eq 2 ]
    [ "$(ids_with_role web | wc -l)" -eq 3 ]
    [ "$(ids_with_role pibl | wc -l)" -eq 1 ]
    # Web servers run before PIBL is launched (it needs their private IPs).
    [ "$(line_no 'wait instance-running')" -lt "$(line_no 'run-instances .*Role,Value=pibl')" ]
    [ "$(n_calls 'wait instance-running')" -eq 2 ]
    # PIBL's Backends tag lists the three private IPs on port 80.
    local backends
    backends=$(for id in $(ids_with_role web); do sed -n 's/^private=//p' "$AWS_STUB_DIR/inst/$id"; done |
        sed 's/$/:80/' | paste -sd ' ')
    grep -qxF "tag:Backends=$backends" "$AWS_STUB_DIR/inst/$(ids_with_role pibl)"
    # It waited on the public URL and printed how to use it.
    local pub
    pub=$(sed -n 's/^public_if_running=//p' "$AWS_STUB_DIR/inst/$(ids_with_role pibl)")
    grep -q "http://$pub:8081/" "$AWS_STUB_DIR/curl-calls"
    [[ "$output" == *"URL:        http://$pub:8081/"* ]]
    [[ "$output" == *"ssh -i $HOME/.ssh/demo-key.pem ec2-user@$pub"* ]]
    [[ "$output" == *"tail -f /var/lib/pibl/pibl.log"* ]]
    [[ "$output" == *"journalctl -u pibl -f"* ]]
}

@test "a re-run creates nothing new and gives the same URL" {
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    local first_url=${output##*URL:        }
    first_url=${first_url%%$'\n'*}
    : >"$AWS_STUB_DIR/calls"
    run "$DEPLOY"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(n_calls 'create-|import-|run-instances|terminate|delete')" -eq 0 ]
    [[ "$output" == *"URL:        $first_url"* ]]
    [[ "$output" == *"rule exists"* ]]
    [ "$(live_count)" -eq 4 ]
    [ "$(ls "$AWS_STUB_DIR/sg" | wc -l)" -eq 2 ]
    [ "$(ls "$AWS_STUB_DIR/kp" | wc -l)" -eq 1 ]
}

@test "client tokens: a launch repeated before EC2 lists it returns the same instances" {
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    touch "$AWS_STUB_DIR/hide-instances-once"     # the next listing misses the web servers
    : >"$AWS_STUB_DIR/calls"
    run "$DEPLOY"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(n_calls 'run-instances .*--count 3 ')" -eq 1 ]   # it did ask again...
    [ "$(live_count)" -eq 4 ]                              # ...and got the same three
}

@test "destroy removes everything in dependency order and is safe to re-run" {
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    local sg_pibl sg_web
    sg_pibl=$(grep -l '^name=pibl-pibl$' "$AWS_STUB_DIR"/sg/* | xargs basename)
    sg_web=$(grep -l '^name=pibl-web$' "$AWS_STUB_DIR"/sg/* | xargs basename)
    : >"$AWS_STUB_DIR/calls"
    run "$DESTROY" --yes
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(line_no .)" -eq "$(line_no 'sts get-caller-identity')" ]
    local t w dw dp dk
    t=$(line_no 'terminate-instances')
    w=$(line_no 'wait instance-terminated')
    dw=$(line_no "delete-security-group --group-id $sg_web")
    dp=$(line_no "delete-security-group --group-id $sg_pibl")
    dk=$(line_no 'delete-key-pair --key-name pibl-key')
    [ -n "$t" ]
    [ -n "$w" ]
    [ -n "$dw" ]
    [ -n "$dp" ]
    [ -n "$dk" ]
    [ "$t" -lt "$w" ]
    [ "$w" -lt "$dw" ]
    [ "$dw" -lt "$dp" ]
    [ "$dp" -lt "$dk" ]
    # All four instances in the one terminate call.
    for id in $(ids_with_role web) $(ids_with_role pibl); do
        calls_of terminate-instances | grep -q " $id"
    done
    [ "$(live_count)" -eq 0 ]
    [ -z "$(ls "$AWS_STUB_DIR/sg")" ]
    [ -z "$(ls "$AWS_STUB_DIR/kp")" ]
    # The local private key stays (it may serve other regions).
    [ -f "$HOME/.ssh/pibl-key.pem" ]
    : >"$AWS_STUB_DIR/calls"
    run "$DESTROY" --yes
    [ "$status" -eq 0 ]
    [ "$(n_calls 'terminate|delete')" -eq 0 ]
    [[ "$output" == *"no instances"* ]]
}

@test "destroy retries a group that is still in use for a moment" {
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    echo "An error occurred (DependencyViolation) when calling the DeleteSecurityGroup operation: resource has a dependent object" \
        >"$AWS_STUB_DIR/fail-once/delete-security-group"
    run "$DESTROY" --yes
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"still in use, retrying"* ]]
    [ -z "$(ls "$AWS_STUB_DIR/sg")" ]
}

@test "destroy leaves a key pair the user brought (no project tag)" {
    ssh-keygen -q -t ed25519 -N '' -f "$BATS_TEST_TMPDIR/mine" >/dev/null
    aws ec2 import-key-pair --key-name mine --public-key-material "fileb://$BATS_TEST_TMPDIR/mine.pub" \
        --query KeyPairId --output text >/dev/null
    run "$DEPLOY" --key-name mine
    [ "$status" -eq 0 ]
    [ "$(n_calls 'import-key-pair')" -eq 1 ]          # only ours, above
    [ "$(n_calls 'run-instances .*--key-name mine ')" -eq 2 ]
    run "$DESTROY" --yes
    [ "$status" -eq 0 ]
    [ -f "$AWS_STUB_DIR/kp/mine" ]
}

@test "deploy after destroy builds a fresh deployment (new groups, new client tokens)" {
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    local old_tokens new_tokens
    old_tokens=$(calls_of run-instances | grep -o -- '--client-token [^ ]*' | sort)
    run "$DESTROY" --yes
    [ "$status" -eq 0 ]
    : >"$AWS_STUB_DIR/calls"
    run "$DEPLOY"
    echo "$output"
    [ "$status" -eq 0 ]
    new_tokens=$(calls_of run-instances | grep -o -- '--client-token [^ ]*' | sort)
    [ "$(echo "$new_tokens" | wc -l)" -eq 2 ]
    [ -z "$(comm -12 <(echo "$old_tokens") <(echo "$new_tokens"))" ]
    [ "$(live_count)" -eq 4 ]
    [ "$(ls "$AWS_STUB_DIR/inst" | wc -l)" -eq 8 ]    # 4 terminated + 4 new
    # The same local key is imported again.
    [ "$(n_calls 'import-key-pair --key-name pibl-key')" -eq 1 ]
}

@test "AWS_ENDPOINT_URL goes to every call as --endpoint-url" {
    export AWS_ENDPOINT_URL=http://127.0.0.1:4566
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    run "$STATUS"
    [ "$status" -eq 0 ]
    run "$DESTROY" --yes
    [ "$status" -eq 0 ]
    [ "$(n_calls .)" -gt 20 ]
    [ "$(n_calls .)" -eq "$(n_calls '^aws --endpoint-url http://127.0.0.1:4566 ')" ]
}

@test "status lists instances and says whether PIBL answers" {
    run "$STATUS"
    [ "$status" -eq 1 ]
    [[ "$output" == *"(none)"* ]]
    [[ "$output" == *"PIBL: not running"* ]]
    run "$DEPLOY" --port 8090
    [ "$status" -eq 0 ]
    run "$STATUS"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(grep -c '^  web .* running ' <<<"$output")" -eq 3 ]
    [ "$(grep -c '^  pibl .* running ' <<<"$output")" -eq 1 ]
    [[ "$output" == *"backends: 172.31."* ]]
    [[ "$output" =~ PIBL:\ http://203\.0\.113\.[0-9]+:8090/\ answers ]]
    echo 1 >"$AWS_STUB_DIR/curl-failures"
    run "$STATUS"
    [ "$status" -eq 1 ]
    [[ "$output" == *"does not answer"* ]]
}

@test "deploy waits until PIBL answers, and says so when it never does" {
    echo 3 >"$AWS_STUB_DIR/curl-failures"
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    [ "$(grep -c . "$AWS_STUB_DIR/curl-calls")" -eq 4 ]
    echo 1000 >"$AWS_STUB_DIR/curl-failures"
    run "$DEPLOY" --wait-timeout 0
    [ "$status" -ne 0 ]
    [[ "$output" == *"did not answer"* ]]
    [[ "$output" == *"URL:"* ]]
}

@test "a stopped instance of the project is reported, not duplicated" {
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    sed -i 's/^state=running$/state=stopped/' "$AWS_STUB_DIR/inst/$(ids_with_role web | head -n 1)"
    : >"$AWS_STUB_DIR/calls"
    run "$DEPLOY"
    [ "$status" -ne 0 ]
    [[ "$output" == *"is stopped"* ]]
    [ "$(n_calls run-instances)" -eq 0 ]
}

@test "web user-data: the same bytes for the three, and it installs exactly www/" {
    local www=$WWW
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    local ids
    mapfile -t ids < <(ids_with_role web)
    [ "${#ids[@]}" -eq 3 ]
    cmp "$AWS_STUB_DIR/userdata/${ids[0]}" "$AWS_STUB_DIR/userdata/${ids[1]}"
    cmp "$AWS_STUB_DIR/userdata/${ids[0]}" "$AWS_STUB_DIR/userdata/${ids[2]}"
    [ "$(wc -c <"$(userdata_of web)")" -le 16384 ]
    gzip -dc "$(userdata_of web)" | grep -q '^install_packages nginx$'
    local root=$BATS_TEST_TMPDIR/web-root
    run dry_run_userdata "$(userdata_of web)" "$root"
    echo "$output"
    [ "$status" -eq 0 ]
    local docroot
    docroot=$(dirname "$(find "$root" -name index.html | head -n 1)")
    diff -r "$www" "$docroot"
    grep -q 'add_header X-Backend' "$root/etc/nginx/conf.d/pibl-backend.conf"
}

@test "web user-data built from the repository's www/ installs the same files" {
    [ -d "$REPO/www" ] || skip "no www/ in the repository yet"
    export PIBL_WWW_DIR="$REPO/www"
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    [ "$(wc -c <"$(userdata_of web)")" -le 16384 ]
    local root=$BATS_TEST_TMPDIR/web-root
    run dry_run_userdata "$(userdata_of web)" "$root"
    [ "$status" -eq 0 ]
    local docroot
    docroot=$(dirname "$(find "$root" -name index.html -path '*html/index.html' | head -n 1)")
    diff -r "$REPO/www" "$docroot"
}

@test "PIBL user-data: builds, writes a pibl.cfg that ./pibl -t accepts, and a valid unit" {
    run "$DEPLOY" --ttl 45 --port 8080
    [ "$status" -eq 0 ]
    local ud root=$BATS_TEST_TMPDIR/pibl-root
    ud=$(userdata_of pibl)
    [ "$(wc -c <"$ud")" -le 16384 ]
    run dry_run_userdata "$ud" "$root"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"pibl: $root/var/lib/pibl/pibl.cfg: OK"* ]]
    [ -x "$root/opt/pibl/bin/pibl" ]
    # pibl.cfg: the three private IPs in launch order, the port, relative log and cache.
    local cfg=$root/var/lib/pibl/pibl.cfg
    cat "$cfg"
    for id in $(ids_with_role web); do
        grep -Eqx "backend = web[1-3] $(sed -n 's/^private=//p' "$AWS_STUB_DIR/inst/$id"):80" "$cfg"
    done
    [ "$(grep -c '^backend = ' "$cfg")" -eq 3 ]
    grep -qx 'port = 8080' "$cfg"
    grep -qx 'log_file = pibl.log' "$cfg"
    grep -qx 'cache_dir = cache' "$cfg"
    if [ -x "$PIBL" ]; then
        run "$PIBL" -t "$cfg"
        echo "$output"
        [ "$status" -eq 0 ]
    else
        echo "# $PIBL not built: pibl -t of the generated config not run" >&3
    fi
    # The unit: TTL from the deployment, restart on failure, cwd where cache/ and the log live.
    local unit=$root/etc/systemd/system/pibl.service
    grep -qx 'ExecStart=/opt/pibl/bin/pibl pibl.cfg 45' "$unit"
    grep -qx 'Restart=on-failure' "$unit"
    grep -qx 'WorkingDirectory=/var/lib/pibl' "$unit"
    grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$unit"
    grep -q '^LimitNOFILE=' "$unit"
    run verify_unit "$unit" "$root"
    echo "$output"
    [ "$status" -eq 0 ]
    echo "# $(head -n 1 <<<"$output")" >&3
}

@test "PIBL user-data from the real source fits in 16 KB, builds and passes pibl -t" {
    local f
    for f in pibl.cpp pibl.h Makefile; do
        [ -f "$REPO/$f" ] || skip "the C++ sources are not in the repository yet"
    done
    # A checkout of the real source whose origin is a network URL, so the git
    # path is taken when the source is too big to ship; the dry run below
    # clones it from a local bare repository (insteadOf), without any network.
    local work=$BATS_TEST_TMPDIR/checkout bare=$BATS_TEST_TMPDIR/origin.git
    mkdir -p "$work"
    cp "$REPO"/Makefile "$REPO"/*.cpp "$REPO"/*.h "$work"/
    [ ! -f "$REPO/pibl.cfg" ] || cp "$REPO/pibl.cfg" "$work"/
    make_checkout "$work" "$bare"
    run "$DEPLOY" --source-dir "$work"
    echo "$output"
    [ "$status" -eq 0 ]
    local ud
    ud=$(userdata_of pibl)
    echo "# PIBL user-data: $(wc -c <"$ud") bytes gzipped; $(grep -o 'PIBL source: [a-z]*' <<<"$output")" >&3
    [ "$(wc -c <"$ud")" -le 16384 ]
    [ "$(wc -c <"$(userdata_of web)")" -le 16384 ]
    local root=$BATS_TEST_TMPDIR/pibl-root
    clone_from "$bare"
    run dry_run_userdata "$ud" "$root"
    echo "$output"
    [ "$status" -eq 0 ]
    [ -x "$root/opt/pibl/bin/pibl" ]
    run "$root/opt/pibl/bin/pibl" -t "$root/var/lib/pibl/pibl.cfg"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "pibl: $root/var/lib/pibl/pibl.cfg: OK" ]
}

@test "source too big to ship and no origin to clone: fails before AWS, naming --git-url" {
    # ~40 KB of incompressible text in a source file.
    { echo '/*'; head -c 30000 /dev/urandom | base64; echo '*/'; } >"$SRC/big.h"
    run "$DEPLOY"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"over EC2's 16384-byte"* ]]
    [[ "$output" == *"--git-url"* ]]
    [ ! -s "$AWS_STUB_DIR/calls" ]
    # With --git-url the PIBL instance clones instead.
    run "$DEPLOY" --git-url https://example.invalid/pibl.git --git-ref main
    [ "$status" -eq 0 ]
    gzip -dc "$(userdata_of pibl)" | grep -q "^git_url=https://example.invalid/pibl.git$"
    gzip -dc "$(userdata_of pibl)" | grep -q '^git clone --depth 1 --branch "$git_ref" "$git_url" "$src"$'
}

@test "a web app too big to ship is cloned from the origin remote, and installs the same files" {
    # The fixture tree becomes a git checkout whose origin is a network URL
    # (cloned from a local bare repository in the dry run, through insteadOf).
    local work=$BATS_TEST_TMPDIR/checkout bare=$BATS_TEST_TMPDIR/origin.git
    mkdir -p "$work"
    cp -R "$SRC"/. "$work"/
    cp -R "$WWW" "$work/www"
    head -c 40000 /dev/urandom >"$work/www/noise.bin"
    make_checkout "$work" "$bare"
    run "$DEPLOY" --source-dir "$work" --www-dir "$work/www"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"web app: git"* ]]
    [[ "$output" == *"will clone $ORIGIN_URL (branch or tag main)"* ]]
    [ "$(wc -c <"$(userdata_of web)")" -le 16384 ]
    local root=$BATS_TEST_TMPDIR/web-root
    clone_from "$bare"
    run dry_run_userdata "$(userdata_of web)" "$root"
    echo "$output"
    [ "$status" -eq 0 ]
    local docroot
    docroot=$(dirname "$(find "$root" -name index.html | head -n 1)")
    diff -r "$work/www" "$docroot"
}

# big_checkout DIR ORIGIN - a git checkout of the fixture source, too big for
# the user-data (40 KB of noise in a tracked file), with ORIGIN as its origin
# remote ("" = none).
big_checkout() {
    mkdir -p "$1"
    cp -R "$SRC"/. "$1"/
    { echo '/*'; head -c 30000 /dev/urandom | base64; echo '*/'; } >"$1/big.h"
    git -C "$1" init -q -b main
    git -C "$1" -c user.name=t -c user.email=t@t add -A
    git -C "$1" -c user.name=t -c user.email=t@t commit -q -m source
    [ -z "$2" ] || git -C "$1" remote add origin "$2"
}

# ssh_call_with TEXT - the number of the first recorded ssh call with an
# argument equal to TEXT.
ssh_call_with() {
    local f
    for f in $(ls "$AWS_STUB_DIR"/ssh/*.args | sort -t / -k 1 -V); do
        if grep -qxF -- "$1" "$f"; then
            basename "$f" .args
            return 0
        fi
    done
    return 1
}

@test "origin is a local path: named so, and the source is copied over SSH instead" {
    local work=$BATS_TEST_TMPDIR/checkout
    big_checkout "$work" /srv/git/pibl.git
    touch "$AWS_STUB_DIR/ssh-record-only"
    run "$DEPLOY" --source-dir "$work" --dry-run
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"origin is a local path (/srv/git/pibl.git), not reachable from AWS"* ]]
    [[ "$output" != *"no origin remote"* ]]
    [[ "$output" == *"PIBL source: copy"* ]]
    git -C "$work" remote set-url origin "file:///srv/git/pibl.git"
    run "$DEPLOY" --source-dir "$work" --dry-run
    [[ "$output" == *"origin is a local path (file:///srv/git/pibl.git), not reachable from AWS"* ]]
    git -C "$work" remote remove origin
    run "$DEPLOY" --source-dir "$work" --dry-run
    [[ "$output" == *"the checkout has no origin remote"* ]]
    [[ "$output" == *"PIBL source: copy"* ]]
    # Forcing git with a local origin: refused before any AWS call, saying why.
    git -C "$work" remote add origin ../elsewhere
    run "$DEPLOY" --source-dir "$work" --source git
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"--source git: origin is a local path (../elsewhere), not reachable from AWS"* ]]
    [[ "$output" == *"--source copy"* ]]
    # A network origin (scp-like SSH) is cloned over HTTPS instead.
    git -C "$work" remote set-url origin git@github.com:someone/pibl.git
    run "$DEPLOY" --source-dir "$work" --dry-run
    [[ "$output" == *"PIBL source: git (https://github.com/someone/pibl.git main)"* ]]
    [ ! -s "$AWS_STUB_DIR/calls" ]
    [ ! -e "$AWS_STUB_DIR/ssh-calls" ]
}

@test "copy mode: git archive of the chosen ref, tracked files only, sent with the managed key; PIBL built there" {
    local work=$BATS_TEST_TMPDIR/checkout
    big_checkout "$work" ""
    # Branch "release" has one more file; main's working tree has an untracked
    # file and an uncommitted change, none of which may travel.
    git -C "$work" checkout -q -b release
    echo 'only on release' >"$work/release-notes.txt"
    git -C "$work" add release-notes.txt
    git -C "$work" -c user.name=t -c user.email=t@t commit -q -m release
    git -C "$work" checkout -q main
    echo 'not tracked' >"$work/untracked.txt"
    echo '// uncommitted' >>"$work/main.cpp"
    echo 2 >"$AWS_STUB_DIR/ssh-failures"           # sshd not up for the first two tries
    run "$DEPLOY" --source-dir "$work" --git-ref release
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"PIBL source: copy (git archive of release, commit $(git -C "$work" rev-parse --short=12 release))"* ]]
    local pibl_id pub pem=$HOME/.ssh/pibl-key.pem
    pibl_id=$(ids_with_role pibl)
    pub=$(sed -n 's/^public_if_running=//p' "$AWS_STUB_DIR/inst/$pibl_id")
    # SSH waited for the instance: two refusals, then the probe that worked.
    [ "$(grep -c " ec2-user@$pub true\$" "$AWS_STUB_DIR/ssh-calls")" -eq 3 ]
    # The upload: to ec2-user at PIBL's public IP, with only the managed key,
    # host keys remembered per instance id.
    local up
    up=$(ssh_call_with 'cat > pibl-source.tar.gz.part && mv -f pibl-source.tar.gz.part pibl-source.tar.gz')
    grep -qxF -- "ec2-user@$pub" "$AWS_STUB_DIR/ssh/$up.args"
    grep -A1 -xF -- -i "$AWS_STUB_DIR/ssh/$up.args" | grep -qxF -- "$pem"
    grep -qxF IdentitiesOnly=yes "$AWS_STUB_DIR/ssh/$up.args"
    grep -qxF BatchMode=yes "$AWS_STUB_DIR/ssh/$up.args"
    grep -qxF "HostKeyAlias=$pibl_id" "$AWS_STUB_DIR/ssh/$up.args"
    grep -qxF "UserKnownHostsFile=$HOME/.ssh/pibl-key.known_hosts" "$AWS_STUB_DIR/ssh/$up.args"
    # What it sent: exactly the files of the ref (git archive), not the
    # untracked file, and main.cpp as committed.
    local archive=$AWS_STUB_DIR/ssh/$up.stdin
    diff <(tar -tzf "$archive" | grep -v '/$' | sort) <(git -C "$work" ls-tree -r --name-only release | sort)
    tar -tzf "$archive" | grep -qx release-notes.txt
    ! tar -tzf "$archive" | grep -q untracked
    diff <(tar -xzOf "$archive" main.cpp) <(git -C "$work" show release:main.cpp)
    [[ "$output" != *"uncommitted changes"* ]]   # they do not matter for --git-ref release
    # The install ran as root (sudo) with the archive and a stamp, after the
    # upload, and built, checked and installed PIBL on the instance.
    local inst
    inst=$(grep -n -m1 "ec2-user@$pub sudo bash -s -- pibl-source.tar.gz [0-9]*-[0-9]*\$" "$AWS_STUB_DIR/ssh-calls" | cut -d : -f 1)
    [ -n "$inst" ]
    [ "$inst" -gt "$up" ]
    local host=$AWS_STUB_DIR/hosts/$pibl_id
    [ -x "$host/root/opt/pibl/bin/pibl" ]
    [ -f "$host/root/opt/pibl/src/release-notes.txt" ]
    [ ! -e "$host/root/opt/pibl/src/untracked.txt" ]
    for id in $(ids_with_role web); do
        grep -Eqx "backend = web[1-3] $(sed -n 's/^private=//p' "$AWS_STUB_DIR/inst/$id"):80" "$host/root/var/lib/pibl/pibl.cfg"
    done
    grep -qx 'ExecStart=/opt/pibl/bin/pibl pibl.cfg 60' "$host/root/etc/systemd/system/pibl.service"
    [[ "$output" == *"pibl: $host/root/var/lib/pibl/pibl.cfg: OK"* ]]
    [ ! -e "$host/home/pibl-source.tar.gz" ]
    [ ! -e "$host/home/pibl-source.tar.gz.part" ]
    # The user-data carried no source, only the tools and the first-boot mark.
    gzip -dc "$(userdata_of pibl)" | grep -q 'pibl-setup/ready'
    ! gzip -dc "$(userdata_of pibl)" | grep -q 'make -C'
    # No SSH to the web servers: the web app went in their user-data.
    [ "$(grep -c ' ec2-user@172\.31\.' "$AWS_STUB_DIR/ssh-calls")" -eq 0 ]
    # A re-run sends the source again and the instance sees nothing changed.
    run "$DEPLOY" --source-dir "$work" --git-ref release
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"is installed already, nothing to do"* ]]
}

@test "copy mode: the install script starts PIBL under systemd, waits for the first boot, skips a known stamp" {
    local work=$BATS_TEST_TMPDIR/checkout
    big_checkout "$work" ""
    touch "$AWS_STUB_DIR/ssh-record-only"
    run "$DEPLOY" --source-dir "$work"
    [ "$status" -eq 0 ]
    local up inst script archive stamp
    up=$(ssh_call_with 'cat > pibl-source.tar.gz.part && mv -f pibl-source.tar.gz.part pibl-source.tar.gz')
    inst=$((up + 1))
    grep -q '^sudo bash -s -- pibl-source.tar.gz ' "$AWS_STUB_DIR/ssh/$inst.args"
    stamp=$(tail -n 1 "$AWS_STUB_DIR/ssh/$inst.args" | cut -d ' ' -f 6)
    script=$AWS_STUB_DIR/ssh/$inst.stdin
    # An instance of our own: a scratch root, and systemctl, useradd, chown
    # that record what they are asked.
    local root=$BATS_TEST_TMPDIR/root home=$BATS_TEST_TMPDIR/home-ec2 bin=$BATS_TEST_TMPDIR/bin
    mkdir -p "$root" "$home" "$bin"
    for tool in systemctl useradd chown; do
        printf '#!/bin/sh\necho "%s $*" >>"%s/admin.log"\n' "$tool" "$BATS_TEST_TMPDIR" >"$bin/$tool"
        chmod +x "$bin/$tool"
    done
    cp "$AWS_STUB_DIR/ssh/$up.stdin" "$home/pibl-source.tar.gz"
    # Before the user-data finished, it gives up (bounded) with a pointer to the log.
    run env -C "$home" PATH="$bin:$PATH" PIBL_UD_ROOT="$root" PIBL_UD_BOOT_TRIES=0 bash "$script" pibl-source.tar.gz "$stamp"
    [ "$status" -ne 0 ]
    [[ "$output" == *"first-boot setup has not finished"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/admin.log" ]
    # After it (the copy-mode user-data, dry run): build, config, unit, start.
    run dry_run_userdata "$(userdata_of pibl)" "$root"
    [ "$status" -eq 0 ]
    [ -f "$root/var/lib/pibl-setup/ready" ]
    run env -C "$home" PATH="$bin:$PATH" PIBL_UD_ROOT="$root" bash "$script" pibl-source.tar.gz "$stamp"
    echo "$output"
    [ "$status" -eq 0 ]
    [ -x "$root/opt/pibl/bin/pibl" ]
    cat "$BATS_TEST_TMPDIR/admin.log"
    grep -qx 'useradd --system --home-dir /var/lib/pibl --shell /usr/sbin/nologin pibl' "$BATS_TEST_TMPDIR/admin.log"
    grep -qx "chown -R pibl:pibl $root/var/lib/pibl" "$BATS_TEST_TMPDIR/admin.log"
    diff <(grep ^systemctl "$BATS_TEST_TMPDIR/admin.log") \
        <(printf 'systemctl daemon-reload\nsystemctl enable pibl.service\nsystemctl restart pibl.service\n')
    grep -q 'pibl-setup: PIBL ready' "$root/var/log/pibl-setup.log"
    [ ! -e "$home/pibl-source.tar.gz" ]
    # The same stamp again: nothing rebuilt or restarted.
    : >"$BATS_TEST_TMPDIR/admin.log"
    cp "$AWS_STUB_DIR/ssh/$up.stdin" "$home/pibl-source.tar.gz"
    run env -C "$home" PATH="$bin:$PATH" PIBL_UD_ROOT="$root" bash "$script" pibl-source.tar.gz "$stamp"
    [ "$status" -eq 0 ]
    [[ "$output" == *"installed already"* ]]
    [ ! -s "$BATS_TEST_TMPDIR/admin.log" ]
}

@test "copy mode for the web app: SSH from PIBL's group only, through PIBL as jump host, same files" {
    run "$DEPLOY" --source copy --source-dir "$SRC" 2>&1
    [ "$status" -ne 0 ] && [[ "$output" == *"not one"* ]]     # PIBL's copy needs a git checkout
    local work=$BATS_TEST_TMPDIR/checkout
    big_checkout "$work" ""
    run "$DEPLOY" --source copy --source-dir "$work"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"web app: copy"* ]]
    local sg_pibl sg_web pibl_id pub id priv n
    sg_pibl=$(grep -l '^name=pibl-pibl$' "$AWS_STUB_DIR"/sg/* | xargs basename)
    sg_web=$(grep -l '^name=pibl-web$' "$AWS_STUB_DIR"/sg/* | xargs basename)
    grep -qx "rule=tcp:22:sg:$sg_pibl" "$AWS_STUB_DIR/sg/$sg_web"
    [ "$(n_calls "authorize-security-group-ingress --group-id $sg_web .*--cidr")" -eq 0 ]
    pibl_id=$(ids_with_role pibl)
    pub=$(sed -n 's/^public_if_running=//p' "$AWS_STUB_DIR/inst/$pibl_id")
    for id in $(ids_with_role web); do
        priv=$(sed -n 's/^private=//p' "$AWS_STUB_DIR/inst/$id")
        n=$(ssh_call_with "HostKeyAlias=$id")
        grep -qxF "ec2-user@$priv" "$AWS_STUB_DIR/ssh/$n.args"
        grep -q "^ProxyCommand=ssh -i $HOME/.ssh/pibl-key.pem .*HostKeyAlias=$pibl_id -W %h:%p ec2-user@$pub\$" \
            "$AWS_STUB_DIR/ssh/$n.args"
        diff -r "$WWW" "$AWS_STUB_DIR/hosts/$id/root/usr/share/nginx/html" 2>/dev/null ||
            diff -r "$WWW" "$AWS_STUB_DIR/hosts/$id/root/var/www/html"
    done
    gzip -dc "$(userdata_of web)" | grep -q 'pibl-setup/ready'
}

# plan_calls - the AWS calls of a --dry-run output ($output), one line each,
# arguments joined by spaces as the aws stub records them.
plan_calls() {
    local line args
    sed -n 's/^  \[[a-z ]*\] *//p' <<<"$output" | while IFS= read -r line; do
        eval "args=($line)"
        printf '%s\n' "${args[*]}"
    done
}

@test "--dry-run makes no AWS call, prints every call with its arguments, the user-data sizes and the modes" {
    # The stub records any call; PIBL_AWS_CLI is also a CLI that fails on any call.
    printf '#!/bin/sh\necho "$*" >>"%s/dead-calls"\nexit 99\n' "$BATS_TEST_TMPDIR" >"$BATS_TEST_TMPDIR/dead-aws"
    chmod +x "$BATS_TEST_TMPDIR/dead-aws"
    PIBL_AWS_CLI=$BATS_TEST_TMPDIR/dead-aws run "$DEPLOY" --dry-run --project demo --region eu-west-1
    echo "$output"
    [ "$status" -eq 0 ]
    [ ! -e "$BATS_TEST_TMPDIR/dead-calls" ]
    run "$DEPLOY" -n --project demo --region eu-west-1
    [ "$status" -eq 0 ]
    [ ! -s "$AWS_STUB_DIR/calls" ]
    [ ! -e "$HOME/.ssh/demo-key.pem" ]
    [[ "$output" == *"no AWS call was made"* ]]
    [[ "$output" == *"web app:     userdata"* ]]
    [[ "$output" == *"PIBL source: userdata"* ]]
    local plan=$output planned
    planned=$(plan_calls)
    # The same deployment for real, on the stub: the sizes and the calls match.
    run "$DEPLOY" --project demo --region eu-west-1
    [ "$status" -eq 0 ]
    [[ "$plan" == *"web  x3 (the same bytes): $(wc -c <"$(userdata_of web)") bytes each"* ]]
    local pibl_planned real
    pibl_planned=$(sed -n 's/^  pibl x1: \([0-9]*\) bytes.*/\1/p' <<<"$plan")
    real=$(wc -c <"$(userdata_of pibl)")
    echo "PIBL user-data: planned $pibl_planned, sent $real"
    [ "$real" -ge $((pibl_planned - 32)) ]
    [ "$real" -le $((pibl_planned + 32)) ]
    # Every planned call was made (placeholders and temporary files aside),
    # and every call made was planned.
    local line re n=0
    while IFS= read -r line; do
        re=$(sed -e 's/[][\\.*^$|?+(){}]/\\&/g' -e 's/<[a-z0-9-]*>/[^ ]+/g' -e 's|fileb:///[^ ]*|fileb://[^ ]+|g' <<<"$line")
        grep -Eq -- "^$re\$" "$AWS_STUB_DIR/calls" || { echo "planned, not made: $line"; return 1; }
        n=$((n + 1))
    done <<<"$planned"
    [ "$n" -ge 20 ]
    while IFS= read -r line; do
        line=$(sed -e 's|fileb:///[^ ]*|F|g' -e 's/ami-[0-9a-f]\{17\}/A/g' -e 's/\<i-[0-9a-f]\{17\}/I/g' -e 's/sg-[0-9a-f]\{17\}/G/g' \
            -e 's/vpc-[0-9a-f]\{17\}/V/g' -e 's/ami-[0-9a-f]\{17\}/A/g' -e 's/172\.31\.[0-9]*\.[0-9]*/P/g' <<<"$line")
        sed -e 's|fileb:///[^ ]*|F|g' -e 's/<sg-[a-z]*>/G/g' -e 's/<default-vpc>/V/g' -e 's/<ami>/A/g' \
            -e 's/<[a-z]*-[0-9]>/I/g' -e 's/<web-[0-9]-private-ip>/P/g' <<<"$planned" | grep -qxF -- "$line" ||
            { echo "made, not planned: $line"; return 1; }
    done <"$AWS_STUB_DIR/calls"
    # With the real CLI and an endpoint where nothing listens, still no call.
    local real_aws
    real_aws=$(PATH=${PATH#"$BATS_TEST_DIRNAME/aws-stub:"} command -v aws) || return 0
    AWS_ENDPOINT_URL=http://127.0.0.1:9 PIBL_AWS_CLI=$real_aws run "$DEPLOY" --dry-run
    [ "$status" -eq 0 ]
    [[ "$output" == *"--endpoint-url http://127.0.0.1:9 --region us-east-1 sts get-caller-identity"* ]]
}

@test "--dry-run in copy mode lists the SSH steps and the archive size, and runs no ssh" {
    local work=$BATS_TEST_TMPDIR/checkout
    big_checkout "$work" ""
    echo '// uncommitted' >>"$work/main.cpp"
    run "$DEPLOY" --dry-run --source-dir "$work"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"has uncommitted changes; the copy takes commit $(git -C "$work" rev-parse --short=12 HEAD) without them"* ]]
    [ ! -s "$AWS_STUB_DIR/calls" ]
    [ ! -e "$AWS_STUB_DIR/ssh-calls" ]
    [[ "$output" =~ pibl-source\.tar\.gz:\ [0-9]+\ bytes,\ sent\ over\ SSH ]]
    [[ "$output" == *"pibl x1: "*" bytes"* ]]
    [[ "$output" == *"'ec2-user@<pibl-1-public-ip>' 'cat > pibl-source.tar.gz.part && mv -f pibl-source.tar.gz.part pibl-source.tar.gz' < pibl-source.tar.gz"* ]]
    [[ "$output" =~ \'ec2-user@\<pibl-1-public-ip\>\'\ \'sudo\ bash\ -s\ --\ pibl-source\.tar\.gz\ [0-9-]+\'\ \<\ pibl-install\.sh ]]
    [ ! -e "$HOME/.ssh/pibl-key.pem" ]
}

# destroy_listing_ok - $output lists the deployment made on the stub: the
# four instances with id and name, the two groups with id and name, the key pair.
destroy_listing_ok() {
    local id f
    output=${output//$'\r'/}                        # a terminal's line ends
    for id in $(ids_with_role web); do
        grep -Eq "^  instance +$id +pibl-web +web +running" <<<"$output"
    done
    grep -Eq "^  instance +$(ids_with_role pibl) +pibl-pibl +pibl +running" <<<"$output"
    for f in "$AWS_STUB_DIR"/sg/*; do
        grep -Eq "^  security group +${f##*/} +$(sed -n 's/^name=//p' "$f")\$" <<<"$output"
    done
    grep -Eq '^  key pair +pibl-key' <<<"$output"
}

@test "destroy lists what it deletes and, without a terminal or --yes, deletes nothing" {
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    : >"$AWS_STUB_DIR/calls"
    run "$DESTROY" </dev/null
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"stdin is not a terminal"*"nothing deleted"*"--yes"* ]]
    destroy_listing_ok
    [ "$(n_calls 'terminate|delete')" -eq 0 ]
    run "$DESTROY" --dry-run
    [ "$status" -eq 0 ]
    [[ "$output" == *"dry run: nothing deleted"* ]]
    destroy_listing_ok
    [ "$(n_calls 'terminate|delete')" -eq 0 ]
    [ "$(live_count)" -eq 4 ]
    [ "$(ls "$AWS_STUB_DIR/sg" | wc -l)" -eq 2 ]
    [ -f "$AWS_STUB_DIR/kp/pibl-key" ]
}

@test "destroy on a terminal asks: no keeps everything, yes deletes it all" {
    command -v script >/dev/null 2>&1 || skip "script(1) (util-linux) not installed: no terminal to test with"
    run "$DEPLOY"
    [ "$status" -eq 0 ]
    : >"$AWS_STUB_DIR/calls"
    local cmd
    cmd=$(printf '%q ' env PATH="$PATH" AWS_STUB_DIR="$AWS_STUB_DIR" PIBL_POLL_SECONDS=0 "$DESTROY")
    run script -qec "$cmd" /dev/null <<<"n"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"Delete these? [y/N]"* ]]
    [[ "$output" == *"nothing deleted"* ]]
    destroy_listing_ok
    [ "$(n_calls 'terminate|delete')" -eq 0 ]
    [ "$(live_count)" -eq 4 ]
    run script -qec "$cmd" /dev/null <<<""
    [ "$status" -ne 0 ] && [ "$(live_count)" -eq 4 ]          # Enter alone is no
    run script -qec "$cmd" /dev/null <<<"y"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(live_count)" -eq 0 ]
    [ -z "$(ls "$AWS_STUB_DIR/sg")" ]
    [ -z "$(ls "$AWS_STUB_DIR/kp")" ]
}

# help_defaults SCRIPT - "--option<TAB>value" for every "(default: value)" in
# SCRIPT -h, the option being the last --word before it on its line or on the
# option line above (a default on a continuation line).
help_defaults() {
    "$1" -h | awk '
        match($0, /^ +(-[a-z], )?--[a-z-]+/) { s = substr($0, RSTART, RLENGTH); sub(/^ +(-[a-z], )?/, "", s); opt = s }
        opt != "" && match($0, /\(default: [^)]*\)/) { d = substr($0, RSTART + 10, RLENGTH - 11); print opt "\t" d }'
}

@test "-h and README.md state the same defaults and the same user-data limit" {
    local script opt value readme n=0
    # README without its backquotes: "`--ttl` (60)" reads "--ttl (60)".
    readme=$(tr -d '`' <"$REPO/README.md" | tr '\n' ' ')
    for script in "$DEPLOY" "$DESTROY" "$STATUS"; do
        while IFS=$'\t' read -r opt value; do
            n=$((n + 1))
            if [[ "$value" == *" "* ]]; then
                # A default in words ("from --os"): the README must name the option.
                [[ "$readme" == *"$opt"* ]] || { echo "README lacks $opt"; return 1; }
            else
                [[ "$readme" == *"$opt ($value)"* || "$readme" == *"$opt ($value,"* || "$readme" == *"$opt ($value "* ]] ||
                    { echo "${script##*/} -h: $opt (default: $value), README differs"; return 1; }
            fi
        done < <(help_defaults "$script")
    done
    [ "$n" -ge 20 ]
    "$DEPLOY" -h | grep -q 'at most 16384 bytes'
    [[ "$readme" == *"16384 bytes"* ]]
    # And the old claim of a fixed compressed size is gone.
    ! grep -q 'unos 27 KB' "$REPO/README.md"
}

@test "copy mode: no SSH answer within --wait-timeout stops the deploy with ssh's last words" {
    local work=$BATS_TEST_TMPDIR/checkout
    big_checkout "$work" ""
    echo 1000 >"$AWS_STUB_DIR/ssh-failures"
    run "$DEPLOY" --source-dir "$work" --wait-timeout 0
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"no SSH answer from ec2-user@203.0.113."*"within 0 s"*"Connection refused"* ]]
    [ "$(grep -c . "$AWS_STUB_DIR/ssh-calls")" -eq 1 ]
    [ ! -s "$AWS_STUB_DIR/curl-calls" ]
}

@test "the scripts are shellcheck-clean" {
    command -v shellcheck >/dev/null || skip "shellcheck not installed"
    run shellcheck -x "$REPO"/scripts/aws-*.sh "$REPO"/scripts/cluster-rehearsal.sh \
        "$BATS_TEST_DIRNAME"/aws-stub/aws "$BATS_TEST_DIRNAME"/aws-stub/curl "$BATS_TEST_DIRNAME"/aws-stub/ssh
    echo "$output"
    [ "$status" -eq 0 ]
}

# start_moto - start moto_server on a free loopback port (skips the test when it, python3 or the real AWS CLI is
# missing) and point the scripts at it with the real CLI; the stubs of ssh and curl stay on PATH, so the
# emulator's public addresses are never contacted. Sets MOTO_PID (teardown stops it) and REAL_AWS.
start_moto() {
    command -v moto_server >/dev/null 2>&1 || skip "moto_server not installed: emulator run skipped"
    command -v python3 >/dev/null 2>&1 || skip "python3 not installed"
    REAL_AWS=$(PATH=${PATH#"$BATS_TEST_DIRNAME/aws-stub:"} command -v aws) || skip "the AWS CLI is not installed"
    local port _
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    setsid moto_server -H 127.0.0.1 -p "$port" >"$BATS_TEST_TMPDIR/moto.log" 2>&1 3>&- &
    MOTO_PID=$!
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
    export PIBL_AWS_CLI=$REAL_AWS AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
    for _ in $(seq 1 40); do
        "$REAL_AWS" --endpoint-url "$AWS_ENDPOINT_URL" --region us-east-1 sts get-caller-identity >/dev/null 2>&1 && break
        sleep 0.5
    done
}

# moto ARGS... - the real CLI against the emulator, text output.
moto() {
    AWS_PAGER='' "$REAL_AWS" --endpoint-url "$AWS_ENDPOINT_URL" --region us-east-1 --output text "$@"
}

@test "the real AWS CLI against a local EC2 emulator (moto_server on 127.0.0.1), when installed" {
    start_moto
    # The curl stub stays on PATH: the emulator's public IPs are never contacted.
    run "$DEPLOY" --no-wait
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"web: launched"* ]]
    [[ "$output" == *"pibl: launched"* ]]
    run "$DEPLOY" --no-wait
    [ "$status" -eq 0 ]
    [[ "$output" != *"web: launched"* ]]
    [[ "$output" != *"pibl: launched"* ]]
    run "$STATUS" --no-probe
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(grep -c ' running ' <<<"$output")" -eq 4 ]
    # Destroy without --yes and without a terminal: lists, refuses, deletes nothing.
    run "$DESTROY" </dev/null
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"stdin is not a terminal"* ]]
    [ "$(grep -Ec '^  instance +i-[0-9a-f]+ +pibl-(web|pibl) ' <<<"$output")" -eq 4 ]
    [ "$(grep -Ec '^  security group +sg-[0-9a-f]+ +pibl-(web|pibl)$' <<<"$output")" -eq 2 ]
    grep -Eq '^  key pair +pibl-key ' <<<"$output"
    if command -v script >/dev/null 2>&1; then
        local cmd
        cmd=$(printf '%q ' env PATH="$PATH" AWS_STUB_DIR="$AWS_STUB_DIR" PIBL_AWS_CLI="$PIBL_AWS_CLI" \
            AWS_ENDPOINT_URL="$AWS_ENDPOINT_URL" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
            AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null "$DESTROY")
        run script -qec "$cmd" /dev/null <<<"n"
        [ "$status" -ne 0 ]
        [[ "$output" == *"nothing deleted"* ]]
    fi
    run "$STATUS" --no-probe
    [ "$(grep -c ' running ' <<<"$output")" -eq 4 ]
    run "$DESTROY" --yes
    echo "$output"
    [ "$status" -eq 0 ]
    run "$STATUS" --no-probe
    [ "$status" -eq 1 ]
    [ "$(grep -c ' running ' <<<"$output")" -eq 0 ]
    [[ "$output" == *"Security groups: (none)"* ]]
    [[ "$output" == *"Key pairs: (none)"* ]]
    [ ! -s "$AWS_STUB_DIR/curl-calls" ]
}

@test "larger topology on moto_server: NLB over two zones with the proxies as targets, web servers in an Auto Scaling group, rules, re-run, scaling, teardown" {
    start_moto
    export PIBL_CLIENT_CIDR=203.0.113.0/24
    run "$DEPLOY" --proxies 2 --web 3 --no-wait
    echo "$output"
    [ "$status" -eq 0 ]
    local nlb_arn dns tg_arn sg_pibl sg_web pibl_ids
    read -r nlb_arn dns <<<"$(moto elbv2 describe-load-balancers --names pibl-nlb \
        --query 'LoadBalancers[0].[LoadBalancerArn,DNSName]')"
    [ -n "$dns" ]
    [[ "$output" == *"URL:        http://$dns:8080/"* ]]
    [ "$(moto elbv2 describe-load-balancers --names pibl-nlb --query 'LoadBalancers[0].[Type,Scheme]')" = \
        $'network\tinternet-facing' ]
    [ "$(moto elbv2 describe-load-balancers --names pibl-nlb --query 'LoadBalancers[0].AvailabilityZones[].ZoneName' |
        wc -w)" -ge 2 ]
    tg_arn=$(moto elbv2 describe-target-groups --names pibl-pibl --query 'TargetGroups[0].TargetGroupArn')
    [ "$(moto elbv2 describe-target-groups --names pibl-pibl \
        --query 'TargetGroups[0].[Protocol,Port,TargetType,HealthCheckProtocol]')" = $'TCP\t8080\tinstance\tTCP' ]
    [ "$(moto elbv2 describe-listeners --load-balancer-arn "$nlb_arn" \
        --query 'Listeners[].[Protocol,Port,DefaultActions[0].Type,DefaultActions[0].TargetGroupArn]')" = \
        $'TCP\t8080\tforward\t'"$tg_arn" ]
    # the targets are exactly the running PIBL instances, spread over two zones, with the follow profile
    pibl_ids=$(moto ec2 describe-instances --filters Name=tag:Project,Values=pibl Name=tag:Role,Values=pibl \
        Name=instance-state-name,Values=running --query 'Reservations[].Instances[].InstanceId' | tr '\t' '\n' | sort)
    [ "$(wc -l <<<"$pibl_ids")" -eq 2 ]
    [ "$(moto elbv2 describe-target-health --target-group-arn "$tg_arn" \
        --query 'TargetHealthDescriptions[].Target.Id' | tr '\t' '\n' | sort)" = "$pibl_ids" ]
    # shellcheck disable=SC2086
    [ "$(moto ec2 describe-instances --instance-ids $pibl_ids \
        --query 'Reservations[].Instances[].Placement.AvailabilityZone' | tr '\t' '\n' | sort -u | wc -l)" -eq 2 ]
    # shellcheck disable=SC2086
    [ "$(moto ec2 describe-instances --instance-ids $pibl_ids \
        --query 'Reservations[].Instances[].IamInstanceProfile.Arn' | tr '\t' '\n' | grep -c 'instance-profile/pibl-follow$')" -eq 2 ]
    # the follow role may only read
    [ "$(moto iam get-role-policy --role-name pibl-follow --policy-name pibl-follow-read-only \
        --query 'PolicyDocument.Statement[].Action[]' | tr '\t' '\n' | sort | paste -sd' ')" = \
        'autoscaling:DescribeAutoScalingGroups ec2:DescribeInstances' ]
    # each PIBL's user-data installs pibl-follow and its timer, for this group
    local id
    id=$(head -n 1 <<<"$pibl_ids")
    moto ec2 describe-instance-attribute --instance-id "$id" --attribute userData --query UserData.Value |
        base64 -d >"$BATS_TEST_TMPDIR/pibl-ud.gz"
    local root=$BATS_TEST_TMPDIR/pibl-root
    run dry_run_userdata "$BATS_TEST_TMPDIR/pibl-ud.gz" "$root"
    echo "$output"
    [ "$status" -eq 0 ]
    cmp "$root/opt/pibl/bin/pibl-follow" "$REPO/scripts/pibl-follow.sh"
    [ -x "$root/opt/pibl/bin/pibl-follow" ]
    grep -qx 'ExecStart=/opt/pibl/bin/pibl-follow --group pibl-web --region us-east-1 --config /var/lib/pibl/pibl.cfg --port 80 --pibl /opt/pibl/bin/pibl --reload "systemctl reload pibl"' \
        "$root/etc/systemd/system/pibl-follow.service"
    grep -qx 'OnUnitActiveSec=30s' "$root/etc/systemd/system/pibl-follow.timer"
    # the first config already holds the group's instances, sorted as pibl-follow writes them
    local web_ids web_ips
    web_ids=$(moto autoscaling describe-auto-scaling-groups --auto-scaling-group-names pibl-web \
        --query 'AutoScalingGroups[0].Instances[].InstanceId')
    # shellcheck disable=SC2086
    web_ips=$(moto ec2 describe-instances --instance-ids $web_ids --query 'Reservations[].Instances[].PrivateIpAddress' |
        tr '\t' '\n' | sort -t . -k 1,1n -k 2,2n -k 3,3n -k 4,4n)
    [ "$(sed -n 's/^backend = \(.*\):80$/\1/p' "$root/var/lib/pibl/pibl.cfg")" = "$web_ips" ]
    # web servers: a launch template and a group of 3, tagged like the plain ones
    [ "$(moto ec2 describe-launch-templates --launch-template-names pibl-web \
        --query 'LaunchTemplates[0].LaunchTemplateName')" = pibl-web ]
    [ "$(moto autoscaling describe-auto-scaling-groups --auto-scaling-group-names pibl-web \
        --query 'AutoScalingGroups[0].[MinSize,MaxSize,DesiredCapacity]')" = $'3\t3\t3' ]
    [ "$(moto autoscaling describe-auto-scaling-groups --auto-scaling-group-names pibl-web \
        --query 'AutoScalingGroups[0].Instances[].InstanceId' | wc -w)" -eq 3 ]
    [ "$(moto ec2 describe-instances --filters Name=tag:Project,Values=pibl Name=tag:Role,Values=web \
        Name=instance-state-name,Values=running --query 'Reservations[].Instances[].InstanceId' | wc -w)" -eq 3 ]
    # rules: web accepts 80 from the proxies' group only; the proxies their port from the client CIDR and the
    # load balancer's subnets, SSH from the client CIDR; nothing else
    sg_pibl=$(moto ec2 describe-security-groups --filters Name=group-name,Values=pibl-pibl --query 'SecurityGroups[0].GroupId')
    sg_web=$(moto ec2 describe-security-groups --filters Name=group-name,Values=pibl-web --query 'SecurityGroups[0].GroupId')
    [ "$(moto ec2 describe-security-groups --group-ids "$sg_web" \
        --query 'SecurityGroups[0].IpPermissions[].[IpProtocol,FromPort,ToPort,UserIdGroupPairs[0].GroupId,length(IpRanges)]')" = \
        $'tcp\t80\t80\t'"$sg_pibl"$'\t0' ]
    local rules subnet_cidrs
    rules=$(moto ec2 describe-security-groups --group-ids "$sg_pibl" \
        --query 'SecurityGroups[0].IpPermissions[].[FromPort,IpRanges[].CidrIp]' | paste -sd' ' | tr '\t' ' ')
    echo "rules: $rules"
    subnet_cidrs=$(moto ec2 describe-subnets --filters Name=default-for-az,Values=true \
        --query 'Subnets[].[AvailabilityZone,CidrBlock]' | sort | head -n 3 | cut -f 2 | sort | paste -sd' ')
    [ "$(moto ec2 describe-security-groups --group-ids "$sg_pibl" \
        --query 'SecurityGroups[0].IpPermissions[?FromPort==`8080`].IpRanges[].CidrIp' | tr '\t' '\n' | sort | paste -sd' ')" = \
        "$(printf '%s\n' 203.0.113.0/24 $subnet_cidrs | sort | paste -sd' ')" ]
    [ "$(moto ec2 describe-security-groups --group-ids "$sg_pibl" \
        --query 'SecurityGroups[0].IpPermissions[?FromPort==`22`].IpRanges[].CidrIp')" = 203.0.113.0/24 ]
    [ "$(moto ec2 describe-security-groups --group-ids "$sg_pibl" \
        --query 'SecurityGroups[0].IpPermissions[].FromPort' | tr '\t' '\n' | sort -n | paste -sd' ')" = '22 8080' ]

    # a second run changes nothing
    run "$DEPLOY" --proxies 2 --web 3 --no-wait
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" != *": launched "* ]]
    [[ "$output" != *"created"* ]]
    [[ "$output" != *"scaled"* ]]
    [[ "$output" == *"Auto Scaling group pibl-web has 3 instances, unchanged"* ]]

    # other counts scale: up to 3 proxies and 4 web servers, then down to 2 proxies
    run "$DEPLOY" --proxies 3 --web 4 --no-wait
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(moto elbv2 describe-target-health --target-group-arn "$tg_arn" --query 'TargetHealthDescriptions[].Target.Id' | wc -w)" -eq 3 ]
    [ "$(moto autoscaling describe-auto-scaling-groups --auto-scaling-group-names pibl-web \
        --query 'AutoScalingGroups[0].[MinSize,MaxSize,DesiredCapacity]')" = $'4\t4\t4' ]
    [ "$(moto ec2 describe-instances --filters Name=tag:Project,Values=pibl Name=tag:Role,Values=pibl \
        Name=instance-state-name,Values=running --query 'Reservations[].Instances[].Placement.AvailabilityZone' |
        tr '\t' '\n' | sort -u | wc -l)" -eq 3 ]
    run "$DEPLOY" --proxies 2 --web 4 --no-wait
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"pibl: scaled down to 2"* ]]
    pibl_ids=$(moto ec2 describe-instances --filters Name=tag:Project,Values=pibl Name=tag:Role,Values=pibl \
        Name=instance-state-name,Values=pending,running --query 'Reservations[].Instances[].InstanceId' | tr '\t' '\n' | sort)
    [ "$(wc -l <<<"$pibl_ids")" -eq 2 ]
    [ "$(moto elbv2 describe-target-health --target-group-arn "$tg_arn" \
        --query 'TargetHealthDescriptions[].Target.Id' | tr '\t' '\n' | sort)" = "$pibl_ids" ]

    # status shows the load balancer, its targets and the group, and asks the load balancer's URL
    run "$STATUS" --no-probe
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"Load balancer: pibl-nlb $dns"* ]]
    [ "$(sed -n '/^Targets of pibl-pibl:/,/^[A-Z]/p' <<<"$output" | grep -c '^  i-')" -eq 2 ]
    [[ "$output" == *"Auto Scaling group: pibl-web min 4 max 4 desired 4"* ]]
    [[ "$output" == *"PIBL: http://$dns:8080/ (not probed)"* ]]

    # teardown: listed, then everything goes, and a second run finds nothing
    run "$DESTROY" --yes
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"load balancer    pibl-nlb"* ]]
    [[ "$output" == *"auto scaling     pibl-web"* ]]
    [[ "$output" == *"IAM role         pibl-follow"* ]]
    [ -z "$(moto elbv2 describe-load-balancers --query 'LoadBalancers[].LoadBalancerName')" ]
    [ -z "$(moto elbv2 describe-target-groups --query 'TargetGroups[].TargetGroupName')" ]
    [ -z "$(moto autoscaling describe-auto-scaling-groups --query 'AutoScalingGroups[].AutoScalingGroupName')" ]
    [ -z "$(moto ec2 describe-launch-templates --query 'LaunchTemplates[].LaunchTemplateName')" ]
    [ -z "$(moto iam list-instance-profiles --query 'InstanceProfiles[].InstanceProfileName')" ]
    [ -z "$(moto iam list-roles --query "Roles[?RoleName=='pibl-follow'].RoleName")" ]
    [ -z "$(moto ec2 describe-instances --filters Name=tag:Project,Values=pibl \
        Name=instance-state-name,Values=pending,running,stopping,stopped,shutting-down --query 'Reservations[].Instances[].InstanceId')" ]
    [ -z "$(moto ec2 describe-security-groups --filters Name=tag:Project,Values=pibl --query 'SecurityGroups[].GroupId')" ]
    run "$DESTROY" --yes
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"nothing to delete"* ]]
}
