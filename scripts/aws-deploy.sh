#!/usr/bin/env bash
# aws-deploy.sh - provision PIBL and three replicated web servers on EC2.
#
# What it does: with the AWS CLI and the caller's credentials, in the default
# VPC of one region, it makes sure these exist (creating only what is missing):
#   - an EC2 key pair, imported from a local ed25519 key (made with ssh-keygen
#     if absent), so the private key never travels;
#   - security group PROJECT-pibl: PIBL's port and SSH from the client CIDR;
#   - security group PROJECT-web: HTTP (80) from PROJECT-pibl only (and SSH
#     from PROJECT-pibl when the web app is copied over SSH);
#   - three web servers (nginx from the distribution, the site from www/,
#     byte-identical on the three);
#   - one PIBL instance that builds PIBL, writes pibl.cfg with the three
#     private IPs and runs it under systemd.
# The larger topology (--proxies N, --web M, --web-asg; aws-cluster.sh): the
# web servers come from a launch template and an Auto Scaling group of M
# instances; N PIBL instances, spread over the default subnets of two or three
# availability zones, each with a read-only instance profile and a systemd
# timer running pibl-follow (scripts/pibl-follow.sh) every 30 s, which keeps its
# backends equal to the group's in-service instances (checked by pibl -t,
# applied by a reload); with N > 1 a Network Load Balancer (TCP listener on
# PIBL's port, target group of the PIBL instances with a TCP health check)
# fronts them and its name is the URL. PIBL's group then also accepts its port
# from the load balancer's subnets (health checks). A re-run with other
# counts scales: the group to M, the PIBL instances to N (the extra ones
# deregistered and terminated).
# How the web app and PIBL's source reach the instances (--source, chosen per
# part before any AWS call):
#   userdata  inside the user-data, when it fits in EC2's 16384 bytes
#             (gzip-compressed; cloud-init decompresses it);
#   git       the instance clones --git-url, or the checkout's origin remote
#             when it is a network URL (https, http, git, ssh);
#   copy      otherwise (no origin, or origin is a local path): the deploy
#             sends the source over SSH with the managed key once the PIBL
#             instance answers (git archive of --git-ref for PIBL, a tar of
#             www/ for the web servers, reached through PIBL as a jump host),
#             and runs the build and start there.
# Then it waits until http://PIBL-IP:PORT/ answers and prints how to use it.
# --dry-run prints the plan (each AWS call, the user-data sizes, the source
# modes, the SSH steps) and makes no AWS call.
#
# Re-running is safe: everything is found again by name and tags (Project,
# Role), launches carry client tokens derived from the PIBL security group id
# (so a repeated call returns the instances it already made, and a deploy after
# aws-destroy.sh, which deletes that group, gets new tokens and a fresh
# deployment). In copy mode a re-run sends the source again; the instance
# rebuilds and restarts only when the source or the configuration changed.
#
# What it refuses: a region without a default VPC, a source mode that cannot
# work (too big for the user-data, no reachable repository, no git checkout to
# archive), stopped instances of the project (start them or destroy), an
# unusable project name, CIDR, port, TTL, git URL or ref. It never deletes
# anything; aws-destroy.sh does that.
#
# Limits: user-data <= 16384 bytes, project name <= 24 characters, one region
# per run, bash >= 4.4.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$script_dir/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=aws-lib.sh
. "$script_dir/aws-lib.sh"
# shellcheck source-path=SCRIPTDIR source=aws-cluster.sh
. "$script_dir/aws-cluster.sh"

readonly USERDATA_MAX=16384           # bytes, EC2's cap on raw user-data
readonly MAX_PROXIES=10                # --proxies at most
readonly MAX_WEB=20                   # --web at most
readonly FOLLOW_BIN=/opt/pibl/bin/pibl-follow  # on a PIBL instance, with --web-asg
readonly WEB_PORT=80                  # the web servers' HTTP port
readonly PIBL_HOME=/var/lib/pibl      # on the instance: cwd, pibl.cfg, cache/, pibl.log
readonly PIBL_BIN=/opt/pibl/bin/pibl  # on the instance: the built binary
readonly BOOT_MARKER=/var/lib/pibl-setup/ready  # on the instance: first-boot setup done (copy mode)
readonly BOOT_TRIES=180               # the copy's install script waits 180 x 5 s for it
readonly PIBL_ARCHIVE=pibl-source.tar.gz  # copy mode: names in the SSH user's home
readonly WEB_ARCHIVE=web-site.tar.gz

region=${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}
instance_type=${PIBL_INSTANCE_TYPE:-t3.micro}
project=${PIBL_PROJECT:-pibl}
key_name=${PIBL_KEY_NAME:-}
client_cidr=${PIBL_CLIENT_CIDR:-0.0.0.0/0}
ttl=${PIBL_TTL:-60}
port=${PIBL_PORT:-8080}
os_name=${PIBL_OS:-al2023}
ami_param=${PIBL_AMI_PARAM:-}
ssh_user=${PIBL_SSH_USER:-}
source_mode=${PIBL_SOURCE:-auto}
git_url=${PIBL_GIT_URL:-}
git_ref=${PIBL_GIT_REF:-HEAD}
source_dir=${PIBL_SOURCE_DIR:-$repo_dir}
www_dir=${PIBL_WWW_DIR:-$repo_dir/www}
key_dir=${PIBL_KEY_DIR:-$HOME/.ssh}
wait_timeout=${PIBL_WAIT_TIMEOUT:-900}
poll_seconds=${PIBL_POLL_SECONDS:-10}
ssh_prog=${PIBL_SSH:-ssh}             # the SSH client; tests put a recorder here
proxies=${PIBL_PROXIES:-1}
web_count=${PIBL_WEB:-3}
web_asg=${PIBL_WEB_ASG:-0}
wait_http=1
dry_run=0
endpoint=${AWS_ENDPOINT_URL:-}
aws_cli=${PIBL_AWS_CLI:-aws}
work_dir=""
plan_file=""                          # dry run: the plan is collected here
instance_ids=()                       # set by ensure_instances
web_mode="" pibl_mode=""              # userdata, git or copy, set by choose_delivery
web_ud_size="" pibl_ud_size=""        # gzipped user-data bytes, set by choose_delivery
origin_url="" origin_problem=""       # set by origin_source
clone_ref=""                          # git mode: --branch for the clone ("" = remote's default)
archive_commit=""                     # copy mode: the commit git archive packs
vpc="" ami="" sg_pibl="" sg_web=""    # found or made by main
pem="" known_hosts=""                 # the managed key and its host keys
subnets=() subnet_cidrs=()            # --web-asg: the default subnets used (aws-cluster.sh)
follow_profile=""                     # --web-asg: the PIBL instances' instance profile

usage() {
    cat <<EOF
Usage: ${0##*/} [options]

Deploys PIBL and its web servers to EC2 (default VPC) and prints the URL:
by default one PIBL and three web servers (the assignment's topology).
Safe to re-run: existing resources are found by name and tags and reused.
Remove everything with scripts/aws-destroy.sh (same --region and --project).

Options: [environment variable] (default: value)
  -r, --region REGION       AWS region [AWS_REGION, AWS_DEFAULT_REGION] (default: us-east-1)
  -i, --instance-type TYPE  EC2 instance type for all four [PIBL_INSTANCE_TYPE] (default: t3.micro)
  -k, --key-name NAME       EC2 key pair name [PIBL_KEY_NAME] (default: PROJECT-key);
                            imported from KEY_DIR/NAME.pem (made if missing)
  -c, --client-cidr CIDR    who may reach PIBL's port and SSH [PIBL_CLIENT_CIDR] (default: 0.0.0.0/0)
                            (narrow it, e.g. --client-cidr 203.0.113.7/32)
      --proxies N           PIBL instances, 1..$MAX_PROXIES [PIBL_PROXIES] (default: 1); above 1 they
                            stand behind a Network Load Balancer (implies --web-asg)
      --web M               web servers, 1..$MAX_WEB [PIBL_WEB] (default: 3)
      --web-asg             the web servers come from an Auto Scaling group, which
                            replaces a dead one; every PIBL follows it [PIBL_WEB_ASG=1]
      --ttl SECONDS         PIBL cache TTL, 0..31536000, 0 = no cache [PIBL_TTL] (default: 60)
  -p, --project NAME        name and Project tag of everything [PIBL_PROJECT] (default: pibl)
      --port PORT           PIBL's listening port [PIBL_PORT] (default: 8080)
      --os NAME             al2023 (Amazon Linux 2023), debian12 or ubuntu24 [PIBL_OS] (default: al2023)
      --ami-param NAME      public SSM parameter holding the AMI id [PIBL_AMI_PARAM]
                            (default: from --os, x86_64; change it for arm64 types)
      --ssh-user USER       login user of the AMI [PIBL_SSH_USER] (default: from --os)
      --source MODE         how the web app and PIBL's source reach the instances [PIBL_SOURCE]
                            (default: auto), one of:
                            userdata  inside the user-data, at most $USERDATA_MAX bytes gzipped
                            git       the instances clone --git-url or the checkout's origin
                            copy      sent over SSH once PIBL boots (git archive of --git-ref;
                                      the web app as a tar, through PIBL)
                            auto      userdata when it fits, else git when there is a
                                      network URL, else copy
      --git-url URL         repository the instances clone (https, http or git URL, no
                            credentials) [PIBL_GIT_URL] (default: the origin remote)
      --git-ref REF         what to build [PIBL_GIT_REF] (default: HEAD): a branch or tag
                            for git (HEAD = the checkout's branch, or with --git-url the
                            remote's default branch), any commit for copy
      --source-dir DIR      the PIBL source checkout [PIBL_SOURCE_DIR] (default: REPO)
      --www-dir DIR         the web app for the web servers [PIBL_WWW_DIR] (default: REPO/www)
      --key-dir DIR         where the private key lives [PIBL_KEY_DIR] (default: ~/.ssh)
      --wait-timeout SECS   how long to wait for SSH and for PIBL to answer [PIBL_WAIT_TIMEOUT] (default: 900)
      --no-wait             do not wait for http://PIBL-IP:PORT/ (e.g. on an emulator)
  -n, --dry-run             print the plan (every AWS call, user-data sizes, source
                            modes, SSH steps) and make no AWS call
  -h, --help                this help

REPO is the repository holding this script. AWS_ENDPOINT_URL, when set, is
passed as --endpoint-url to every AWS call (a local EC2 emulator, for instance).
AWS_PROFILE selects a CLI profile. PIBL_SSH names the ssh client (default ssh).

Needs: aws (CLI v1 or v2) with credentials, ssh-keygen, gzip, base64, curl;
git, tar and ssh for the copy mode.
EOF
}

# need_value OPTION COUNT - die unless the option has its value.
need_value() {
    [ "$2" -ge 2 ] || die "option $1 needs a value (see -h)"
}

# parse_args ARGS... - set the globals from the command line.
parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
        -h | --help) usage; exit 0 ;;
        -r | --region) need_value "$1" $#; region=$2; shift ;;
        -i | --instance-type) need_value "$1" $#; instance_type=$2; shift ;;
        -k | --key-name) need_value "$1" $#; key_name=$2; shift ;;
        -c | --client-cidr) need_value "$1" $#; client_cidr=$2; shift ;;
        --ttl) need_value "$1" $#; ttl=$2; shift ;;
        -p | --project) need_value "$1" $#; project=$2; shift ;;
        --port) need_value "$1" $#; port=$2; shift ;;
        --os) need_value "$1" $#; os_name=$2; shift ;;
        --ami-param) need_value "$1" $#; ami_param=$2; shift ;;
        --ssh-user) need_value "$1" $#; ssh_user=$2; shift ;;
        --source) need_value "$1" $#; source_mode=$2; shift ;;
        --git-url) need_value "$1" $#; git_url=$2; shift ;;
        --git-ref) need_value "$1" $#; git_ref=$2; shift ;;
        --source-dir) need_value "$1" $#; source_dir=$2; shift ;;
        --www-dir) need_value "$1" $#; www_dir=$2; shift ;;
        --key-dir) need_value "$1" $#; key_dir=$2; shift ;;
        --wait-timeout) need_value "$1" $#; wait_timeout=$2; shift ;;
        --proxies) need_value "$1" $#; proxies=$2; shift ;;
        --web) need_value "$1" $#; web_count=$2; shift ;;
        --web-asg) web_asg=1 ;;
        --no-wait) wait_http=0 ;;
        -n | --dry-run) dry_run=1 ;;
        *) die "unknown argument \"$1\" (see -h)" ;;
        esac
        shift
    done
}

# is_uint VALUE MIN MAX - 0 when VALUE is a decimal integer in [MIN, MAX].
is_uint() {
    [[ "$1" =~ ^[0-9]{1,10}$ ]] && [ "$((10#$1))" -ge "$2" ] && [ "$((10#$1))" -le "$3" ]
}

# validate_args - refuse values that AWS or PIBL would refuse later, after
# resources were already made; fill the defaults that depend on other options.
validate_args() {
    validate_common
    [ -n "$key_name" ] || key_name="$project-key"
    [[ "$key_name" =~ ^[A-Za-z0-9._-]{1,200}$ ]] || die "key name \"$key_name\": use letters, digits, . _ -"
    [[ "$instance_type" =~ ^[a-z0-9-]+\.[a-z0-9-]+$ ]] || die "instance type \"$instance_type\" looks wrong (e.g. t3.micro)"
    [[ "$client_cidr" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})/([0-9]{1,2})$ ]] ||
        die "client CIDR \"$client_cidr\" must be an IPv4 CIDR such as 203.0.113.7/32 or 0.0.0.0/0"
    local i
    for i in 1 2 3 4; do
        [ "${BASH_REMATCH[i]}" -le 255 ] || die "client CIDR \"$client_cidr\": octet over 255"
    done
    [ "${BASH_REMATCH[5]}" -le 32 ] || die "client CIDR \"$client_cidr\": prefix over 32"
    is_uint "$ttl" 0 31536000 || die "TTL \"$ttl\" must be an integer number of seconds, 0..31536000"
    ttl=$((10#$ttl))
    is_uint "$port" 1 65535 || die "port \"$port\" must be 1..65535"
    port=$((10#$port))
    [ "$port" -ne 22 ] || die "port 22 is SSH's; choose another PIBL port"
    is_uint "$proxies" 1 "$MAX_PROXIES" || die "--proxies \"$proxies\" must be 1..$MAX_PROXIES"
    proxies=$((10#$proxies))
    is_uint "$web_count" 1 "$MAX_WEB" || die "--web \"$web_count\" must be 1..$MAX_WEB"
    web_count=$((10#$web_count))
    case $web_asg in
    0 | 1) ;;
    *) die "PIBL_WEB_ASG=\"$web_asg\" must be 0 or 1" ;;
    esac
    [ "$proxies" -eq 1 ] || web_asg=1   # several proxies follow a group, never a fixed list
    is_uint "$wait_timeout" 0 86400 || die "wait timeout \"$wait_timeout\" must be 0..86400 seconds"
    case $os_name in
    al2023) : "${ami_param:=/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64}" "${ssh_user:=ec2-user}" ;;
    debian12) : "${ami_param:=/aws/service/debian/release/12/latest/amd64}" "${ssh_user:=admin}" ;;
    ubuntu24) : "${ami_param:=/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id}" "${ssh_user:=ubuntu}" ;;
    *) die "unknown --os \"$os_name\" (al2023, debian12 or ubuntu24)" ;;
    esac
    [[ "$ssh_user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "SSH user \"$ssh_user\" looks wrong"
    case $source_mode in
    auto | userdata | git | copy) ;;
    *) die "unknown --source \"$source_mode\" (auto, userdata, git or copy)" ;;
    esac
    [[ "$git_ref" =~ ^[A-Za-z0-9._/~^][A-Za-z0-9._/~^-]{0,99}$ ]] || die "git ref \"$git_ref\" looks wrong"
    if [ -n "$git_url" ]; then
        if [ "$source_mode" = copy ] || [ "$source_mode" = userdata ]; then
            die "--git-url and --source $source_mode contradict each other"
        fi
        check_git_url "$git_url"
    else
        [ -f "$source_dir/Makefile" ] || die "no Makefile in \"$source_dir\" (--source-dir), or use --git-url"
    fi
    [ -d "$www_dir" ] || die "web app folder \"$www_dir\" not found (--www-dir)"
    pem=$key_dir/$key_name.pem
    known_hosts=$key_dir/$key_name.known_hosts
}

# check_git_url URL - refuse a URL the instances could not clone, or one that
# could break out of the generated script's quoting. file:// only makes sense
# for the offline tests (the clone runs on the instance).
check_git_url() {
    [[ "$1" =~ ^(https://|http://|git://|file:///)[^[:space:]\'\"\\\`$]+$ ]] ||
        die "git URL \"$1\" must be an https:// (or http://, git://) URL the instances can clone without credentials"
}

# origin_source - look at the source checkout's origin remote. Sets origin_url
# to an anonymous clone URL when origin is a network URL (git@HOST:PATH and
# ssh://USER@HOST/PATH become https://HOST/PATH), else sets origin_problem to
# why there is none. A local path (/x/y, ../y, file://...) is no use on AWS.
origin_source() {
    local url
    origin_url="" origin_problem=""
    if ! command -v git >/dev/null 2>&1; then
        origin_problem="git is not installed here"
        return 0
    fi
    if ! git -C "$source_dir" rev-parse --git-dir >/dev/null 2>&1; then
        origin_problem="$source_dir is not a git checkout"
        return 0
    fi
    if ! url=$(git -C "$source_dir" remote get-url origin 2>/dev/null); then
        origin_problem="the checkout has no origin remote"
        return 0
    fi
    case $url in
    https://* | http://* | git://*) ;;
    ssh://*)
        [[ "$url" =~ ^ssh://([^@/]+@)?([A-Za-z0-9.-]+)(:[0-9]+)?/(.+)$ ]] &&
            url="https://${BASH_REMATCH[2]}/${BASH_REMATCH[4]}" ;;
    *://*) ;;
    *)
        # git reads HOST:PATH (no slash before the colon) as scp-like SSH;
        # anything else is a path on this machine.
        if [[ "$url" =~ ^([^/@:]+@)?([A-Za-z0-9.-]+):([^/].*)$ ]]; then
            url="https://${BASH_REMATCH[2]}/${BASH_REMATCH[3]}"
        else
            origin_problem="origin is a local path ($url), not reachable from AWS"
            return 0
        fi ;;
    esac
    case $url in
    https://* | http://* | git://*) ;;
    *)
        origin_problem="origin is a local path ($url), not reachable from AWS"
        return 0 ;;
    esac
    if ! (check_git_url "$url") 2>/dev/null; then
        origin_problem="origin ($url) is not a URL the instances can clone"
        return 0
    fi
    origin_url=$url
}

# check_local_tools - the commands this script needs besides the AWS CLI.
check_local_tools() {
    local tool missing=()
    for tool in gzip base64 ssh-keygen cksum sort; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ "$wait_http" = 1 ]; then
        command -v curl >/dev/null 2>&1 || missing+=(curl)
    fi
    [ ${#missing[@]} -eq 0 ] || die "missing local commands: ${missing[*]}"
}

# check_copy_tools - the commands the copy mode needs (after choose_delivery).
check_copy_tools() {
    local tool missing=()
    [ "$web_mode" = copy ] || [ "$pibl_mode" = copy ] || return 0
    for tool in tar "$ssh_prog"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] || die "the copy mode needs these local commands: ${missing[*]}"
}

# shell_quote WORD... - print the words as one shell command line: a word with
# anything outside [A-Za-z0-9_./:=,@%+-] goes in single quotes.
shell_quote() {
    local w words=() q="'\\''"
    for w in "$@"; do
        if [[ "$w" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            words+=("$w")
        else
            words+=("'${w//\'/$q}'")
        fi
    done
    printf '%s\n' "${words[*]}"
}

# plan_aws WHEN ARGS... - dry run: add the AWS call aws_run would make, with
# WHEN (always, or "if missing": only when a re-run does not find the
# resource) to the plan.
plan_aws() {
    local when=$1 extra=()
    shift
    if [ -n "$endpoint" ]; then
        extra=(--endpoint-url "$endpoint")
    fi
    printf '  %-12s %s\n' "[$when]" "$(shell_quote "$aws_cli" "${extra[@]}" --region "$region" "$@")" >>"$plan_file"
}

# plan_note TEXT - dry run: add a line of prose to the plan.
plan_note() {
    printf '  %s\n' "$*" >>"$plan_file"
}

# ---------------------------------------------------------------- user-data

# is_heredoc_safe FILE DELIM - 0 when FILE can travel as a quoted here-document
# unchanged: no NUL byte, ends with a newline (or is empty), and no line equal
# to DELIM. Other files travel base64-encoded.
is_heredoc_safe() {
    local file=$1 delim=$2
    [ "$(tr -d '\000' <"$file" | wc -c)" -eq "$(wc -c <"$file")" ] || return 1
    [ -z "$(tail -c 1 "$file")" ] || return 1
    ! grep -qxF -- "$delim" "$file"
}

# emit_tree SRC_DIR DEST_VAR FILE... - print shell code that recreates each
# FILE (relative to SRC_DIR) under the directory named by the shell variable
# DEST_VAR of the generated script, byte for byte. Text files go as quoted
# here-documents (the whole user-data is gzipped, so they compress well);
# others as base64.
emit_tree() {
    local src=$1 dest=$2 rel dir delim q
    shift 2
    for rel in "$@"; do
        dir=$(dirname "$rel")
        if [ "$dir" != . ]; then
            printf 'mkdir -p "$%s"/%q\n' "$dest" "$dir"
        fi
        q=$(printf '%q' "$rel")
        delim="PIBL_EOF_$(cksum <"$src/$rel" | cut -d ' ' -f 1)"
        if is_heredoc_safe "$src/$rel" "$delim"; then
            printf "cat > \"\$%s\"/%s <<'%s'\n" "$dest" "$q" "$delim"
            cat "$src/$rel"
        else
            printf "base64 -d > \"\$%s\"/%s <<'%s'\n" "$dest" "$q" "$delim"
            base64 -w 76 <"$src/$rel"
        fi
        printf '%s\n' "$delim"
    done
}

# list_source_files DIR - the files PIBL's build needs, relative to DIR, one a
# line, sorted: Makefile, top-level *.cpp and *.h, pibl.cfg if present.
list_source_files() {
    local dir=$1 f
    (
        cd "$dir" || exit 1
        for f in Makefile pibl.cfg ./*.cpp ./*.h; do
            if [ -f "$f" ]; then
                printf '%s\n' "${f#./}"
            fi
        done
    ) | LC_ALL=C sort -u
}

# list_www_files DIR - every regular file under DIR (hidden ones too, as a
# clone would copy them), relative, sorted.
list_www_files() {
    (cd "$1" && find . -type f | sed 's|^\./||' | LC_ALL=C sort)
}

# script_head ROLE WHAT - the opening every generated script shares (WHAT:
# "User-data" or "Install script"): strict mode, the offline-test seams, the
# log, and a package installer for dnf or apt.
script_head() {
    cat <<EOF
#!/bin/bash
# $2 of a $1 instance of project $project, generated by scripts/aws-deploy.sh.
# It runs as root (user-data: once, by cloud-init at first boot; install
# script: through SSH, copy mode); output also in /var/log/pibl-setup.log.
set -euo pipefail
EOF
    cat <<'EOF'
# Offline-test seams, unset on EC2: every path is prefixed with PIBL_UD_ROOT, and
# PIBL_UD_DRY_RUN=1 skips packages, users and systemd.
root=${PIBL_UD_ROOT:-}
dry_run=${PIBL_UD_DRY_RUN:-0}
if [ "$dry_run" = 1 ] && [ -z "$root" ]; then
    echo "pibl-setup: PIBL_UD_DRY_RUN=1 needs PIBL_UD_ROOT (a scratch folder)" >&2
    exit 2
fi
if [ "$dry_run" != 1 ]; then
    mkdir -p "$root/var/log"
    exec > >(tee -a "$root/var/log/pibl-setup.log") 2>&1
fi
echo "pibl-setup: start $(date -u +%FT%TZ)"

# install_packages PKG... - from the distribution's repositories (dnf or apt).
install_packages() {
    if [ "$dry_run" = 1 ]; then
        echo "pibl-setup: dry run, would install: $*"
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y "$@"
    else
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -y
        apt-get install -y --no-install-recommends "$@"
    fi
}
EOF
}

# boot_marker_write - print the user-data lines that say the first-boot setup
# is done; the copy's install script waits for them.
boot_marker_write() {
    # shellcheck disable=SC2016  # $root is for the generated script
    printf 'mkdir -p "$root%s"\ntouch "$root%s"\n' "$(dirname "$BOOT_MARKER")" "$BOOT_MARKER"
    # shellcheck disable=SC2016
    echo 'echo "pibl-setup: first-boot setup done; the source comes over SSH $(date -u +%FT%TZ)"'
}

# install_script_start ROLE - print the opening of a copy-mode install script
# for ROLE after its head: a main function taking the archive and a stamp of
# what it installs, that first waits (bounded) for the first-boot setup and
# stops early when that stamp is already installed. The caller prints the body
# and install_script_end.
install_script_start() {
    # shellcheck disable=SC2016  # the $ are for the generated script
    printf 'boot_marker=$root%s\nstamp_file=$root/var/lib/pibl-setup/%s.installed\n' "$BOOT_MARKER" "$1"
    # shellcheck disable=SC2016
    printf 'boot_tries=${PIBL_UD_BOOT_TRIES:-%s}\n' "$BOOT_TRIES"
    cat <<'EOF'
# main ARCHIVE STAMP - install ARCHIVE (a .tar.gz) unless STAMP is installed.
main() {
    local archive=$1 stamp=$2 tries=0
    until [ -f "$boot_marker" ]; do
        tries=$((tries + 1))
        if [ "$tries" -gt "$boot_tries" ]; then
            echo "pibl-setup: the first-boot setup has not finished; see /var/log/pibl-setup.log" >&2
            exit 1
        fi
        echo "pibl-setup: waiting for the first-boot setup (user-data)"
        sleep 5
    done
    if [ "$(cat "$stamp_file" 2>/dev/null || true)" = "$stamp" ]; then
        echo "pibl-setup: $stamp is installed already, nothing to do"
        rm -f "$archive"
        return 0
    fi
EOF
}

# install_script_end - close main: record the stamp; run main with stdin
# closed (the script itself arrives on bash's stdin).
install_script_end() {
    cat <<'EOF'
    rm -f "$archive"
    echo "$stamp" > "$stamp_file"
}
main "$@" </dev/null
EOF
}

# web_docroot - print the lines that set $docroot for the distribution.
web_docroot() {
    cat <<'EOF'
if command -v dnf >/dev/null 2>&1; then
    docroot=$root/usr/share/nginx/html   # Amazon Linux, Fedora family
else
    docroot=$root/var/www/html           # Debian, Ubuntu
fi
EOF
}

# render_web_userdata OUT MODE - write the web servers' user-data script (text)
# to OUT: nginx from the distribution, the site (MODE userdata: inside the
# script; git: from a clone of git_url; copy: none yet, it comes over SSH) in
# its document root, an X-Backend header naming the host, nginx enabled.
render_web_userdata() {
    local out=$1 mode=$2 files=()
    {
        script_head web User-data
        echo
        echo 'install_packages nginx'
        web_docroot
        cat <<'EOF'
rm -rf "$docroot"
mkdir -p "$docroot"
EOF
        case $mode in
        git)
            printf 'git_url=%q\ngit_ref=%q\n' "$git_url" "$clone_ref"
            cat <<'EOF'
install_packages git
tmp_src=$(mktemp -d)
git clone --depth 1 ${git_ref:+--branch "$git_ref"} "$git_url" "$tmp_src"
cp -R "$tmp_src"/www/. "$docroot"/
rm -rf "$tmp_src"
EOF
            ;;
        userdata)
            printf '# The web app, the same on every web server (from www/).\n'
            mapfile -t files < <(list_www_files "$www_dir")
            [ ${#files[@]} -gt 0 ] || die "web app folder \"$www_dir\" is empty"
            emit_tree "$www_dir" docroot "${files[@]}"
            ;;
        esac
        cat <<'EOF'
chmod -R a+rX "$docroot"
mkdir -p "$root/etc/nginx/conf.d"
# Name the answering host, so round robin can be seen from a browser.
cat > "$root/etc/nginx/conf.d/pibl-backend.conf" <<'CONF'
add_header X-Backend $hostname always;
CONF
if [ "$dry_run" != 1 ]; then
    systemctl enable nginx
    systemctl restart nginx
fi
EOF
        if [ "$mode" = copy ]; then
            boot_marker_write
        else
            # shellcheck disable=SC2016
            echo 'echo "pibl-setup: web server ready $(date -u +%FT%TZ)"'
        fi
    } >"$out"
}

# render_web_install OUT - write the copy mode's install script for a web
# server: the site from the archive (a tar of www/) into the document root.
render_web_install() {
    {
        script_head web "Install script"
        install_script_start web
        web_docroot | sed 's/^/    /'
        cat <<'EOF'
    rm -rf "$docroot"
    mkdir -p "$docroot"
    tar -xzf "$archive" --no-same-owner -C "$docroot"
    chmod -R a+rX "$docroot"
    echo "pibl-setup: web site installed $(date -u +%FT%TZ)"
EOF
        install_script_end
    } >"$1"
}

# render_pibl_cfg BACKEND... - print pibl.cfg for the given host:port backends.
render_pibl_cfg() {
    local b n=0
    printf '# pibl.cfg - generated by scripts/aws-deploy.sh for project %s.\n' "$project"
    if [ "$web_asg" = 1 ]; then
        printf '# The backends are the private IPs of the Auto Scaling group %s, kept current\n' "$project-web"
        printf '# by pibl-follow (pibl-follow.timer).\n'
    else
        printf '# The backends are the private IPs of the %s web servers, named web1...\n' "$web_count"
    fi
    printf 'listen = 0.0.0.0\nport = %s\n' "$port"
    for b in "$@"; do
        n=$((n + 1))
        if [ "$web_asg" = 1 ]; then
            printf 'backend = %s\n' "$b"       # as pibl-follow writes them
        else
            printf 'backend = web%d %s\n' "$n" "$b"
        fi
    done
    printf 'log_file = pibl.log\ncache_dir = cache\n'
}

# render_unit - print the systemd unit from scripts/pibl.service.
render_unit() {
    local template=$script_dir/pibl.service
    [ -f "$template" ] || die "unit template $template is missing"
    sed -e "s|@PIBL_BIN@|$PIBL_BIN|g" -e "s|@PIBL_HOME@|$PIBL_HOME|g" \
        -e "s|@PIBL_CFG@|pibl.cfg|g" -e "s|@PIBL_TTL@|$ttl|g" \
        -e "s|@PIBL_USER@|pibl|g" "$template"
}

# pibl_vars - print the lines that name PIBL's paths on the instance.
pibl_vars() {
    # shellcheck disable=SC2016  # $root is for the generated script
    printf 'pibl_bin=$root%s\npibl_home=$root%s\nsrc=$root/opt/pibl/src\n' "$PIBL_BIN" "$PIBL_HOME"
}

# pibl_build_and_start BACKEND... - print the lines, shared by the user-data
# and the copy's install script, that build the source in $src, install the
# binary, write pibl.cfg (checked with pibl -t) and the unit, and start PIBL.
pibl_build_and_start() {
    cat <<'EOF'
make -C "$src" pibl
install -D -m 0755 "$src/pibl" "$pibl_bin"
mkdir -p "$pibl_home"
cat > "$pibl_home/pibl.cfg" <<'PIBL_CFG_EOF'
EOF
    render_pibl_cfg "$@"
    cat <<'EOF'
PIBL_CFG_EOF
"$pibl_bin" -t "$pibl_home/pibl.cfg"
mkdir -p "$root/etc/systemd/system"
cat > "$root/etc/systemd/system/pibl.service" <<'PIBL_UNIT_EOF'
EOF
    render_unit
    cat <<'EOF'
PIBL_UNIT_EOF
EOF
    [ "$web_asg" != 1 ] || render_follow
    cat <<'EOF'
if [ "$dry_run" != 1 ]; then
    if ! id pibl >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/pibl --shell /usr/sbin/nologin pibl
    fi
    chown -R pibl:pibl "$pibl_home"
    systemctl daemon-reload
    systemctl enable pibl.service
    systemctl restart pibl.service
    if [ -f "$root/etc/systemd/system/pibl-follow.timer" ]; then
        systemctl enable --now pibl-follow.timer
    fi
fi
echo "pibl-setup: PIBL ready $(date -u +%FT%TZ)"
EOF
}

# render_follow - print the lines that install pibl-follow (this checkout's
# scripts/pibl-follow.sh) with its service and 30 s timer, and the AWS CLI it
# calls (Amazon Linux has it; apt systems get the awscli package).
render_follow() {
    local follow=$script_dir/pibl-follow.sh
    [ -f "$follow" ] || die "$follow is missing"
    is_heredoc_safe "$follow" PIBL_FOLLOW_EOF || die "$follow holds the line PIBL_FOLLOW_EOF"
    # shellcheck disable=SC2016  # for the generated script
    printf 'mkdir -p "$root%s"\ncat > "$root%s" <<'"'"'PIBL_FOLLOW_EOF'"'"'\n' "$(dirname "$FOLLOW_BIN")" "$FOLLOW_BIN"
    cat "$follow"
    # shellcheck disable=SC2016
    printf 'PIBL_FOLLOW_EOF\nchmod 0755 "$root%s"\n' "$FOLLOW_BIN"
    cat <<'EOF'
command -v aws >/dev/null 2>&1 || [ "$dry_run" = 1 ] || install_packages awscli
cat > "$root/etc/systemd/system/pibl-follow.service" <<'PIBL_UNIT_EOF'
[Unit]
Description=PIBL: backends follow the web servers' Auto Scaling group
After=network-online.target pibl.service
Wants=network-online.target

[Service]
Type=oneshot
EOF
    printf 'ExecStart=%s --group %s --region %s --config %s/pibl.cfg --port %s --pibl %s --reload "systemctl reload pibl"\n' \
        "$FOLLOW_BIN" "$project-web" "$region" "$PIBL_HOME" "$WEB_PORT" "$PIBL_BIN"
    cat <<'EOF'
PIBL_UNIT_EOF
cat > "$root/etc/systemd/system/pibl-follow.timer" <<'PIBL_UNIT_EOF'
[Unit]
Description=PIBL: look up the web servers' Auto Scaling group every 30 s

[Timer]
OnBootSec=30s
OnUnitActiveSec=30s
AccuracySec=5s

[Install]
WantedBy=timers.target
PIBL_UNIT_EOF
EOF
}

# render_pibl_userdata OUT MODE BACKEND... - write PIBL's user-data script
# (text) to OUT: build tools, then MODE userdata: the source inside the
# script; git: a clone of git_url at clone_ref; both then build and start
# PIBL. MODE copy: only the tools and the first-boot marker (the install
# script does the rest over SSH).
render_pibl_userdata() {
    local out=$1 mode=$2 files=()
    shift 2
    {
        script_head pibl User-data
        pibl_vars
        echo
        echo 'if command -v dnf >/dev/null 2>&1; then'
        echo '    install_packages gcc-c++ make tar'
        echo 'else'
        echo '    install_packages g++ make tar'
        echo 'fi'
        case $mode in
        copy)
            boot_marker_write
            ;;
        git)
            # shellcheck disable=SC2016
            printf 'rm -rf "$src"\nmkdir -p "$src"\n'
            printf 'git_url=%q\ngit_ref=%q\n' "$git_url" "$clone_ref"
            echo 'install_packages git'
            if [ -n "$clone_ref" ]; then
                # shellcheck disable=SC2016  # for the generated script
                echo 'git clone --depth 1 --branch "$git_ref" "$git_url" "$src"'
            else
                # shellcheck disable=SC2016
                echo 'git clone --depth 1 "$git_url" "$src"'
            fi
            pibl_build_and_start "$@"
            ;;
        userdata)
            # shellcheck disable=SC2016
            printf 'rm -rf "$src"\nmkdir -p "$src"\n'
            printf '# PIBL source, shipped from the deploying checkout.\n'
            mapfile -t files < <(list_source_files "$source_dir")
            emit_tree "$source_dir" src "${files[@]}"
            pibl_build_and_start "$@"
            ;;
        esac
    } >"$out"
}

# render_pibl_install OUT BACKEND... - write the copy mode's install script for
# the PIBL instance: the source from the archive (git archive) into $src,
# then build and start as the user-data would.
render_pibl_install() {
    local out=$1
    shift
    {
        script_head pibl "Install script"
        pibl_vars
        install_script_start pibl
        cat <<'EOF'
    rm -rf "$src"
    mkdir -p "$src"
    tar -xzf "$archive" --no-same-owner -C "$src"
EOF
        pibl_build_and_start "$@"   # not indented: it holds here-documents
        install_script_end
    } >"$out"
}

# compress_userdata TEXT OUT - gzip TEXT into OUT, deterministically (no name,
# no time stamp: a retried launch must send identical bytes); print the size.
compress_userdata() {
    gzip -9 -n -c <"$1" >"$2"
    wc -c <"$2" | tr -d ' '
}

# use_git_source WHAT - make git_url and clone_ref name a repository the
# instances can clone: --git-url, or else the checkout's origin remote (a
# network URL). Returns 1, with origin_problem saying why, when there is none.
use_git_source() {
    local what=$1 branch from_origin=0
    if [ -z "$git_url" ]; then
        origin_source
        [ -n "$origin_url" ] || return 1
        git_url=$origin_url
        from_origin=1
    elif [ "$git_url" != "$origin_url" ]; then
        origin_url=""   # --git-url given: HEAD means the remote's default branch
    fi
    if [ "$git_ref" != HEAD ]; then
        clone_ref=$git_ref
    elif [ -n "$origin_url" ]; then
        branch=$(git -C "$source_dir" symbolic-ref -q --short HEAD 2>/dev/null) ||
            die "the source checkout is not on a branch; pass --git-ref BRANCH (or --source copy)"
        clone_ref=$branch
    fi
    if ! [[ "$clone_ref" =~ ^[A-Za-z0-9._/-]{0,100}$ ]] || [[ "$clone_ref" == -* ]]; then
        die "git ref \"$clone_ref\" cannot be cloned: a branch or tag name, or use --source copy"
    fi
    if [ "$from_origin" = 1 ]; then
        warn "the instances will clone $git_url (branch or tag $clone_ref) for $what:
  they get what is pushed there, not uncommitted or unpushed changes here."
    fi
    return 0
}

# use_copy_source WHAT - check that the copy mode can pack the PIBL source:
# a git checkout where --git-ref names a commit. Sets archive_commit.
use_copy_source() {
    command -v git >/dev/null 2>&1 || die "$1: the copy mode needs git here (git archive)"
    git -C "$source_dir" rev-parse --git-dir >/dev/null 2>&1 ||
        die "$1: the copy mode packs a git checkout (git archive) and $source_dir is not one;
  make it one (git init, git add, git commit), or pass --git-url URL of a repository the instances can clone"
    archive_commit=$(git -C "$source_dir" rev-parse --verify --quiet "$git_ref^{commit}") ||
        die "$1: git ref \"$git_ref\" names no commit in $source_dir"
    if [ "$git_ref" = HEAD ] && [ -n "$(git -C "$source_dir" status --porcelain --untracked-files=no)" ]; then
        warn "$source_dir has uncommitted changes; the copy takes commit ${archive_commit:0:12} without them"
    fi
}

# pick_mode PART WHAT SIZE [GIT_FIRST] - choose how PART (web or pibl) reaches
# its instances, given that its user-data with the content inside is SIZE
# bytes gzipped; GIT_FIRST=1 when --git-url asks for git over userdata. Sets
# the global picked and says why on stdout. Dies when the asked mode cannot
# work.
pick_mode() {
    local part=$1 what=$2 size=$3 git_first=${4:-0} fits=0 over
    [ "$size" -gt "$USERDATA_MAX" ] || fits=1
    over="$what is $size bytes gzipped, over EC2's $USERDATA_MAX-byte user-data limit"
    case $source_mode in
    userdata)
        [ "$fits" = 1 ] || die "$over (--source userdata); use --source git or copy"
        picked=userdata ;;
    git)
        use_git_source "$what" || die "--source git: $origin_problem. Push the repository where the
  instances can clone it without credentials and pass --git-url URL, or use --source copy"
        picked=git ;;
    copy)
        picked=copy ;;
    auto)
        if [ "$fits" = 1 ] && [ "$git_first" = 0 ]; then
            picked=userdata
        elif use_git_source "$what"; then
            picked=git
        else
            info "$over, and $origin_problem: it is copied over SSH once the instances boot"
            picked=copy
        fi ;;
    esac
    if [ "$picked" = copy ] && [ "$part" = pibl ]; then
        use_copy_source "$what"
    fi
}

# choose_delivery - decide, before any AWS call, how the web app and PIBL's
# source reach the instances (see --source), and check the 16 KB limit with
# the longest possible backend addresses. Sets web_mode, pibl_mode,
# web_ud_size and pibl_ud_size; leaves the user-data in work_dir/web.sh.gz
# and work_dir/pibl.sh.gz. Dies when no mode works.
choose_delivery() {
    local size picked git_first=0
    # Three different addresses as long as any (a repeated one would compress
    # better than real ones); the real user-data differs by a few bytes.
    local long=(254.253.252.251:80 249.248.247.246:80 244.243.242.241:80)
    render_web_userdata "$work_dir/web.sh" userdata
    size=$(compress_userdata "$work_dir/web.sh" "$work_dir/web.sh.gz")
    pick_mode web "the web app in $www_dir" "$size"
    web_mode=$picked
    if [ "$web_mode" != userdata ]; then
        render_web_userdata "$work_dir/web.sh" "$web_mode"
    fi
    if [ "$web_mode" = copy ] && [ "$web_asg" = 1 ]; then
        die "the web app cannot be copied over SSH to an Auto Scaling group (--web-asg, --proxies > 1): the
  group launches instances on its own. Make it fit in the user-data or give a --git-url to clone"
    fi
    web_ud_size=$(compress_userdata "$work_dir/web.sh" "$work_dir/web.sh.gz")
    [ "$web_ud_size" -le "$USERDATA_MAX" ] || die "the web servers' user-data is $web_ud_size bytes gzipped, over $USERDATA_MAX"

    [ -z "$git_url" ] || git_first=1
    size=0
    if [ -f "$source_dir/Makefile" ]; then
        render_pibl_userdata "$work_dir/pibl.sh" userdata "${long[@]}"
        size=$(compress_userdata "$work_dir/pibl.sh" "$work_dir/pibl.sh.gz")
    fi
    pick_mode pibl "the PIBL source in $source_dir" "$size" "$git_first"
    pibl_mode=$picked
    render_pibl_userdata "$work_dir/pibl.sh" "$pibl_mode" "${long[@]}"
    pibl_ud_size=$(compress_userdata "$work_dir/pibl.sh" "$work_dir/pibl.sh.gz")
    [ "$pibl_ud_size" -le "$USERDATA_MAX" ] || die "PIBL's user-data is $pibl_ud_size bytes gzipped, over $USERDATA_MAX"
    info "web app: $web_mode ($web_ud_size bytes of user-data); PIBL source: $pibl_mode$(source_detail "$pibl_mode")"
}

# source_detail MODE - print " (what exactly)" for a PIBL source mode.
source_detail() {
    case $1 in
    git) printf ' (%s %s)' "$git_url" "${clone_ref:-default branch}" ;;
    copy) printf ' (git archive of %s, commit %s)' "$git_ref" "${archive_commit:0:12}" ;;
    esac
}

# ---------------------------------------------------------------- AWS steps

# find_default_vpc - print the default VPC id or die.
find_default_vpc() {
    # shellcheck disable=SC2054  # the commas belong to the filter
    local vpc args=(ec2 describe-vpcs --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text)
    if [ "$dry_run" = 1 ]; then
        plan_aws always "${args[@]}"
        echo '<default-vpc>'
        return 0
    fi
    vpc=$(aws_run "${args[@]}") || die "could not list the VPCs of $region"
    if [ -z "$vpc" ] || [ "$vpc" = None ]; then
        die "region $region has no default VPC. Create one with:
  aws ec2 create-default-vpc --region $region"
    fi
    printf '%s\n' "$vpc"
}

# find_ami - print the current AMI id from the public SSM parameter, or die.
find_ami() {
    local ami args=(ssm get-parameter --name "$ami_param" --query Parameter.Value --output text)
    if [ "$dry_run" = 1 ]; then
        plan_aws always "${args[@]}"
        echo '<ami>'
        return 0
    fi
    ami=$(aws_run "${args[@]}") || die "could not read SSM parameter $ami_param in $region"
    [[ "$ami" =~ ^ami-[0-9a-f]+$ ]] || die "SSM parameter $ami_param gave \"$ami\", not an AMI id"
    printf '%s\n' "$ami"
}

# tag_spec TYPE ROLE [KEY=VALUE...] - print a --tag-specifications item.
tag_spec() {
    local type=$1 role=$2 kv tags
    shift 2
    tags="{Key=Name,Value=$project-$role},{Key=Project,Value=$project},{Key=Role,Value=$role}"
    for kv in "$@"; do
        tags+=",{Key=${kv%%=*},Value=${kv#*=}}"
    done
    printf 'ResourceType=%s,Tags=[%s]\n' "$type" "$tags"
}

# ensure_key_pair - make sure key pair key_name exists in the region and that
# we hold its private key: generate KEY_DIR/NAME.pem if missing, import its
# public half if the key pair is missing. An existing key pair is reused as is.
ensure_key_pair() {
    local found
    local find=(ec2 describe-key-pairs --filters "Name=key-name,Values=$key_name"
        --query 'KeyPairs[0].KeyName' --output text)
    local import=(ec2 import-key-pair --key-name "$key_name" --public-key-material "fileb://$work_dir/key.pub"
        --tag-specifications "$(tag_spec key-pair key)" --query KeyPairId --output text)
    if [ "$dry_run" = 1 ]; then
        plan_aws always "${find[@]}"
        plan_aws "if missing" "${import[@]}"
        [ -f "$pem" ] || plan_note "(local: $pem does not exist; ssh-keygen -t ed25519 would make it)"
        return 0
    fi
    found=$(aws_run "${find[@]}") || die "could not list key pairs"
    if [ "$found" = "$key_name" ]; then
        info "key pair $key_name exists, reused"
        [ -f "$pem" ] || warn "key pair $key_name exists but its private key is not at $pem; SSH needs it"
        return 0
    fi
    if [ ! -f "$pem" ]; then
        if [ ! -d "$key_dir" ]; then
            mkdir -p "$key_dir"
            chmod 700 "$key_dir"
        fi
        ssh-keygen -q -t ed25519 -N '' -C "$project@pibl-deploy" -f "$pem" >/dev/null
        info "new SSH key $pem"
    fi
    ssh-keygen -y -f "$pem" >"$work_dir/key.pub" || die "cannot read the public key of $pem"
    aws_run "${import[@]}" >/dev/null || die "could not import key pair $key_name"
    info "key pair $key_name imported from $pem"
}

# ensure_security_group ROLE DESCRIPTION - print the id of group PROJECT-ROLE
# in the default VPC, creating it (tagged) if no group has that name and tags.
ensure_security_group() {
    local role=$1 desc=$2 name="$project-$1" id
    local find=(ec2 describe-security-groups --filters "Name=vpc-id,Values=$vpc"
        "Name=group-name,Values=$name" "Name=tag:Project,Values=$project"
        --query 'SecurityGroups[0].GroupId' --output text)
    local make=(ec2 create-security-group --group-name "$name" --description "$desc"
        --vpc-id "$vpc" --tag-specifications "$(tag_spec security-group "$role")"
        --query GroupId --output text)
    if [ "$dry_run" = 1 ]; then
        plan_aws always "${find[@]}"
        plan_aws "if missing" "${make[@]}"
        printf '<sg-%s>\n' "$role"
        return 0
    fi
    id=$(aws_run "${find[@]}") || die "could not list security groups"
    if [ -n "$id" ] && [ "$id" != None ]; then
        info "security group $name ($id) exists, reused" >&2
    else
        id=$(aws_run "${make[@]}") || die "could not create security group $name"
        info "security group $name ($id) created" >&2
    fi
    printf '%s\n' "$id"
}

# allow_ingress GROUP_ID WHAT ARGS... - add one inbound TCP rule; a rule that
# already exists (a re-run) is fine, any other error is fatal.
allow_ingress() {
    local group=$1 what=$2 out
    shift 2
    if [ "$dry_run" = 1 ]; then
        plan_aws always ec2 authorize-security-group-ingress --group-id "$group" "$@"
        return 0
    fi
    if out=$(aws_run ec2 authorize-security-group-ingress --group-id "$group" "$@" 2>&1 >/dev/null); then
        info "rule added: $what"
    elif [[ "$out" == *InvalidPermission.Duplicate* ]]; then
        info "rule exists: $what"
    else
        die "could not add rule ($what): $out"
    fi
}

# running_instances ROLE - print the project's running instances with that
# Role (list_instances layout); in a dry run, plan the call and print
# placeholders: web_count web servers or proxies PIBL instances.
running_instances() {
    local role=$1 instance_args=() n=1 i
    if [ "$dry_run" != 1 ]; then
        list_instances "$role" running
        return
    fi
    list_instances_args "$role" running
    plan_aws always "${instance_args[@]}"
    n=$proxies
    [ "$role" = pibl ] || n=$web_count
    for ((i = 1; i <= n; i++)); do
        printf '<%s-%s>\trunning\t<%s-%s-private-ip>\t<%s-%s-public-ip>\t%s\tNone\tNone\t%s-%s\n' \
            "$role" "$i" "$role" "$i" "$role" "$i" "$role" "$project" "$role"
    done
}

# ensure_instances ROLE COUNT GROUP USERDATA_GZ [TAG=VALUE...] - make sure
# COUNT pending-or-running instances with this Role exist; launch the missing
# ones with IMDSv2 required, tags and a client token, terminate the ones over
# COUNT (the last in id order). With subnets set (--web-asg) the PIBL
# instances are launched one by one, spread over them, with the instance
# profile. Sets the global array instance_ids to their ids (sorted). Exits on
# error.
ensure_instances() {
    local role=$1 count=$2 group=$3 userdata=$4 have="" n_have=0 token ids state instance_args=() i
    local place=()
    shift 4
    if [ "$dry_run" = 1 ]; then
        list_instances_args "$role" "pending,running,stopping,stopped"
        plan_aws always "${instance_args[@]}"
    else
        have=$(list_instances "$role" "pending,running,stopping,stopped") || die "could not list instances"
    fi
    while IFS=$'\t' read -r _ state _; do
        case $state in
        stopping | stopped)
            die "a $role instance of project $project is $state: start it (aws ec2 start-instances)
  or remove the deployment with scripts/aws-destroy.sh" ;;
        esac
    done <<<"$have"
    n_have=$(grep -c . <<<"$have" || true)
    # Same PIBL group + same number of survivors = same token: a retried
    # call returns the instances it already made instead of making more.
    token="$project-$role-$sg_pibl-$n_have"
    [ -z "$follow_profile" ] || [ "$role" != pibl ] || place=(--iam-instance-profile "Name=$follow_profile")
    # shellcheck disable=SC2054  # the commas belong to the options
    local common=(--key-name "$key_name" --security-group-ids "$group" "${place[@]}"
        --user-data "fileb://$userdata"
        --metadata-options HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=1
        --tag-specifications "$(tag_spec instance "$role" "$@")" "$(tag_spec volume "$role")")
    local launch=(ec2 run-instances --image-id "$ami" --instance-type "$instance_type"
        --count "$((count - n_have))" "${common[@]}"
        --client-token "$token" --query 'Instances[].InstanceId' --output text)
    if [ "$role" = pibl ] && [ ${#subnets[@]} -gt 0 ]; then
        launch_spread "$count" "$n_have" "$have" "${common[@]}"
        if [ "$dry_run" = 1 ]; then
            instance_ids=()
            for ((i = 1; i <= count; i++)); do
                instance_ids+=("<$role-$i>")
            done
            return 0
        fi
        have=$(list_instances "$role" "pending,running") || die "could not list instances"
        mapfile -t instance_ids < <(cut -f 1 <<<"$have")
        return 0
    fi
    if [ "$dry_run" = 1 ]; then
        plan_aws "if missing" "${launch[@]}"
        list_instances_args "$role" "pending,running"
        plan_aws always "${instance_args[@]}"
        instance_ids=()
        for ((i = 1; i <= count; i++)); do
            instance_ids+=("<$role-$i>")
        done
        return 0
    fi
    if [ "$n_have" -lt "$count" ]; then
        ids=$(aws_run "${launch[@]}") || die "could not launch the $role instances"
        info "$role: launched ${ids//$'\t'/ } (client token $token)"
    else
        info "$role: $n_have instance(s) exist, none launched"
        [ "$n_have" -eq "$count" ] || terminate_extra "$role" "$count" "$have"
    fi
    have=$(list_instances "$role" "pending,running") || die "could not list instances"
    [ -n "$have" ] || die "no $role instance is pending or running after the launch: a client token of this
  deployment was used by instances that are now terminated. Run scripts/aws-destroy.sh, then deploy again."
    mapfile -t instance_ids < <(cut -f 1 <<<"$have")
}

# launch_spread COUNT N_HAVE LINES LAUNCH-ARGS... - launch the PIBL
# instances N_HAVE+1..COUNT one by one, instance k in subnet k mod the number
# of subnets (so two or more zones hold them), each with its own client token;
# terminate the ones of LINES (the existing ones) over COUNT. A new instance
# profile may take a few seconds to be usable by EC2: the launch is retried.
launch_spread() {
    local count=$1 n_have=$2 lines=$3 k ids tries token subnet
    shift 3
    for ((k = n_have; k < count; k++)); do
        token="$project-pibl-$sg_pibl-$n_have-$k" subnet=${subnets[k % ${#subnets[@]}]}
        local one=(ec2 run-instances --image-id "$ami" --instance-type "$instance_type" --count 1 "$@"
            --subnet-id "$subnet" --client-token "$token" --query 'Instances[].InstanceId' --output text)
        if [ "$dry_run" = 1 ]; then
            plan_aws "if missing" "${one[@]}"
            continue
        fi
        for ((tries = 1; ; tries++)); do
            ids=$(aws_run "${one[@]}" 2>"$work_dir/launch.err") && break
            if [ "$tries" -ge 6 ] || ! grep -qi 'instance profile' "$work_dir/launch.err"; then
                die "could not launch PIBL instance $((k + 1)): $(cat "$work_dir/launch.err")"
            fi
            sleep "$poll_seconds"
        done
        info "pibl: launched ${ids//$'\t'/ } in $subnet (client token $token)"
    done
    if [ "$n_have" -gt "$count" ]; then
        terminate_extra pibl "$count" "$lines"
    elif [ "$n_have" -eq "$count" ]; then
        info "pibl: $n_have instance(s) exist, none launched"
    fi
}

# terminate_extra ROLE COUNT LINES - terminate the instances of LINES
# (list_instances layout, sorted) past the first COUNT.
terminate_extra() {
    local role=$1 count=$2 extra
    extra=$(tail -n "+$((count + 1))" <<<"$3" | cut -f 1 | tr '\n' ' ')
    [ -n "${extra// /}" ] || return 0
    if [ "$dry_run" = 1 ]; then
        plan_aws "if over" ec2 terminate-instances --instance-ids '<extra>'
        return 0
    fi
    # shellcheck disable=SC2086  # one word per id
    aws_run ec2 terminate-instances --instance-ids $extra --query 'TerminatingInstances[].InstanceId' \
        --output text >/dev/null || die "could not terminate the extra $role instances $extra"
    info "$role: scaled down to $count, terminated $extra"
    # shellcheck disable=SC2086
    aws_run ec2 wait instance-terminated --instance-ids $extra || warn "the $role instances $extra are still terminating"
}

# wait_running ROLE IDS... - block until the instances run (the CLI's waiter
# polls every 15 s, up to 40 times).
wait_running() {
    local role=$1
    shift
    if [ "$dry_run" = 1 ]; then
        plan_aws always ec2 wait instance-running --instance-ids "$@"
        return 0
    fi
    info "waiting for the $role instances to run: $*"
    aws_run ec2 wait instance-running --instance-ids "$@" ||
        die "the $role instances did not reach 'running' (terminated? see the EC2 console)"
}

# wait_for_http URL - poll URL until it answers 2xx/3xx or wait_timeout passes.
wait_for_http() {
    local url=$1 start now
    start=$(date +%s)
    info "waiting for $url to answer (PIBL builds on first boot; a few minutes)"
    while :; do
        if http_probe "$url"; then
            info "PIBL answers at $url"
            return 0
        fi
        now=$(date +%s)
        if [ $((now - start)) -ge "$wait_timeout" ]; then
            return 1
        fi
        sleep "$poll_seconds"
    done
}

# ---------------------------------------------------------------- copy over SSH

# ssh_args ID - set the caller's array ssh_opts for a connection to instance
# ID: the managed key only, no prompts, a 10 s connect timeout, keep-alives
# through a long build, and host keys remembered per instance id
# (HostKeyAlias) in KEY_DIR/NAME.known_hosts, accepted the first time: EC2
# reuses public IPs, never instance ids.
ssh_args() {
    ssh_opts=(-i "$pem" -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=10
        -o ServerAliveInterval=30 -o StrictHostKeyChecking=accept-new
        -o "UserKnownHostsFile=$known_hosts" -o "HostKeyAlias=$1")
}

# remote_run ID ADDRESS VIA INPUT COMMAND - run COMMAND (a shell line) as
# ssh_user on instance ID at ADDRESS, its stdin from the file INPUT. VIA is
# "JUMP_ID JUMP_ADDRESS" to go through that instance (the web servers have no
# SSH from outside), or "". The one place that runs ssh_prog; in a dry run it
# adds the command to the plan instead. Returns ssh's status.
remote_run() {
    local id=$1 addr=$2 via=$3 input=$4 cmd=$5 ssh_opts=() proxy=()
    if [ -n "$via" ]; then
        ssh_args "${via%% *}"
        proxy=(-o "ProxyCommand=$(shell_quote "$ssh_prog" "${ssh_opts[@]}" -W %h:%p "$ssh_user@${via#* }")")
    fi
    ssh_args "$id"
    if [ "$dry_run" = 1 ]; then
        [ "$input" = /dev/null ] || input=${input##*/}
        plan_note "$(shell_quote "$ssh_prog" "${ssh_opts[@]}" "${proxy[@]}" "$ssh_user@$addr" "$cmd") < $input"
        return 0
    fi
    "$ssh_prog" "${ssh_opts[@]}" "${proxy[@]}" "$ssh_user@$addr" "$cmd" <"$input"
}

# wait_for_ssh ID ADDRESS VIA - retry a no-op SSH command until it works or
# wait_timeout passes (sshd starts a little after the instance runs).
wait_for_ssh() {
    local start now err
    if [ "$dry_run" = 1 ]; then
        plan_note "wait until this works (every $poll_seconds s, up to $wait_timeout s):"
        remote_run "$1" "$2" "$3" /dev/null true
        return 0
    fi
    start=$(date +%s)
    info "waiting for SSH on $ssh_user@$2 ($1)"
    until err=$(remote_run "$1" "$2" "$3" /dev/null true 2>&1 >/dev/null); do
        now=$(date +%s)
        [ $((now - start)) -lt "$wait_timeout" ] ||
            die "no SSH answer from $ssh_user@$2 ($1) within $wait_timeout s; the last try said:
  ${err:-nothing}
  (key $pem; is port 22 open to you, --client-cidr?)"
        sleep "$poll_seconds"
    done
}

# send_and_install ID ADDRESS VIA ARCHIVE SCRIPT NAME - upload ARCHIVE as NAME
# in the SSH user's home (through a .part file, so a broken upload is never
# installed), then run SCRIPT there as root with NAME and a stamp of ARCHIVE
# plus SCRIPT (unchanged stamp: the instance does nothing).
send_and_install() {
    local id=$1 addr=$2 via=$3 archive=$4 script=$5 name=$6 stamp
    stamp=$(cat "$archive" "$script" | cksum | tr ' ' -)
    [ "$dry_run" = 1 ] || info "sending ${archive##*/} ($(wc -c <"$archive" | tr -d ' ') bytes) to $ssh_user@$addr ($id) and installing it"
    remote_run "$id" "$addr" "$via" "$archive" "cat > $name.part && mv -f $name.part $name" ||
        die "could not send ${archive##*/} to $addr ($id)"
    remote_run "$id" "$addr" "$via" "$script" "sudo bash -s -- $name $stamp" ||
        die "the install on $addr ($id) failed; its log: /var/log/pibl-setup.log"
}

# pack_sources - make the copy mode's archives in work_dir: pibl-source.tar.gz
# (git archive of archive_commit: tracked files only) and web-site.tar.gz
# (every file of www_dir, as the user-data would carry them).
pack_sources() {
    if [ "$pibl_mode" = copy ]; then
        git -C "$source_dir" archive --format=tar.gz -o "$work_dir/$PIBL_ARCHIVE" "$archive_commit" ||
            die "git archive of $git_ref in $source_dir failed"
    fi
    if [ "$web_mode" = copy ]; then
        (cd "$www_dir" && tar -cf - .) | gzip -9 -n >"$work_dir/$WEB_ARCHIVE" ||
            die "could not pack $www_dir"
    fi
}

# deliver_by_ssh PIBL_ID PIBL_ADDRESS WEB_LINES BACKEND... - the copy mode,
# once the instances run: wait for SSH on PIBL, install the web app on each
# web server (through PIBL) and PIBL's source on PIBL.
deliver_by_ssh() {
    local pibl_id=$1 pibl_addr=$2 web_lines=$3 id priv
    shift 3
    [ "$web_mode" = copy ] || [ "$pibl_mode" = copy ] || return 0
    if [ "$dry_run" = 1 ]; then
        plan_note ""
        plan_note "SSH steps (copy mode), with the managed key $pem:"
    fi
    wait_for_ssh "$pibl_id" "$pibl_addr" ""
    if [ "$web_mode" = copy ]; then
        render_web_install "$work_dir/web-install.sh"
        while IFS=$'\t' read -r id _ priv _; do
            [ -n "$id" ] || continue
            wait_for_ssh "$id" "$priv" "$pibl_id $pibl_addr"
            send_and_install "$id" "$priv" "$pibl_id $pibl_addr" "$work_dir/$WEB_ARCHIVE" \
                "$work_dir/web-install.sh" "$WEB_ARCHIVE"
        done <<<"$web_lines"
    fi
    if [ "$pibl_mode" = copy ]; then
        render_pibl_install "$work_dir/pibl-install.sh" "$@"
        send_and_install "$pibl_id" "$pibl_addr" "" "$work_dir/$PIBL_ARCHIVE" \
            "$work_dir/pibl-install.sh" "$PIBL_ARCHIVE"
    fi
}

# topology_lines PIBL_LINES - the summary's lines on the larger topology.
topology_lines() {
    [ "$web_asg" = 1 ] || return 0
    printf '\n  Web group:  Auto Scaling group %s, %s instances; pibl-follow updates every PIBL within 30 s' \
        "$(asg_name)" "$web_count"
    printf '\n  Proxies:    %s' "$(cut -f 1,4 <<<"$1" | tr '\t\n' '@ ')"
    [ "$proxies" -eq 1 ] || printf '\n  Balancer:   Network Load Balancer %s (TCP %s, targets: the %s proxies)' \
        "$(nlb_name)" "$port" "$proxies"
}

# print_plan - dry run: the source modes, the user-data sizes and the calls.
print_plan() {
    local a
    cat <<EOF

Dry run for project "$project" in $region: no AWS call was made.
Source:
  web app:     $web_mode
  PIBL source: $pibl_mode$(source_detail "$pibl_mode")
EOF
    for a in "$PIBL_ARCHIVE" "$WEB_ARCHIVE"; do
        [ ! -f "$work_dir/$a" ] || printf '  %s: %s bytes, sent over SSH\n' "$a" "$(wc -c <"$work_dir/$a" | tr -d ' ')"
    done
    cat <<EOF
User-data (gzipped; EC2's limit is $USERDATA_MAX bytes per instance):
  web  x$web_count (the same bytes): $web_ud_size bytes each
  pibl x$proxies: $pibl_ud_size bytes (with placeholder backend addresses; the real ones change it by a few bytes)
AWS calls, in order ([if missing]: skipped for what a re-run finds):
EOF
    cat "$plan_file"
    if [ "$wait_http" = 1 ]; then
        local at='<pibl-1-public-ip>'
        [ "$proxies" -eq 1 ] || at='<nlb-dns-name>'
        printf '\nThen: wait up to %s s for http://%s:%s/ to answer.\n' "$wait_timeout" "$at" "$port"
    fi
}

cleanup() {
    if [ -n "$work_dir" ]; then
        rm -rf "$work_dir"
    fi
}

main() {
    parse_args "$@"
    validate_args
    check_local_tools
    work_dir=$(mktemp -d)
    trap cleanup EXIT

    choose_delivery
    check_copy_tools
    pack_sources

    if [ "$dry_run" = 1 ]; then
        plan_file=$work_dir/plan
        : >"$plan_file"
        plan_aws always sts get-caller-identity --query '[Account,Arn]' --output text
    else
        check_cli_and_credentials
    fi
    if [ "$client_cidr" = 0.0.0.0/0 ]; then
        warn "PIBL's port $port and SSH will be open to the whole Internet (0.0.0.0/0);
  narrow them with --client-cidr YOUR.PUBLIC.IP/32"
    fi
    vpc=$(find_default_vpc)
    ami=$(find_ami)
    [ "$dry_run" = 1 ] || info "default VPC: $vpc; AMI: $ami ($ami_param)"
    ensure_key_pair

    sg_pibl=$(ensure_security_group pibl "PIBL reverse proxy, project $project")
    sg_web=$(ensure_security_group web "PIBL web servers, HTTP from the PIBL group only, project $project")
    allow_ingress "$sg_pibl" "PIBL port $port from $client_cidr" --protocol tcp --port "$port" --cidr "$client_cidr"
    allow_ingress "$sg_pibl" "SSH from $client_cidr" --protocol tcp --port 22 --cidr "$client_cidr"
    allow_ingress "$sg_web" "HTTP $WEB_PORT from $sg_pibl" --protocol tcp --port "$WEB_PORT" --source-group "$sg_pibl"
    if [ "$web_mode" = copy ]; then
        allow_ingress "$sg_web" "SSH from $sg_pibl (the web app is copied through PIBL)" \
            --protocol tcp --port 22 --source-group "$sg_pibl"
    fi

    local pibl_lines web_lines backends=() id state priv pub role tport tbackends
    if [ "$web_asg" = 1 ]; then
        local sn cidr
        if [ "$dry_run" = 1 ]; then
            # shellcheck disable=SC2054
            plan_aws always ec2 describe-subnets --filters "Name=vpc-id,Values=$vpc" Name=default-for-az,Values=true \
                --query 'Subnets[].[SubnetId,AvailabilityZone,CidrBlock]' --output text
            subnets=('<subnet-a>' '<subnet-b>') subnet_cidrs=('<cidr-a>' '<cidr-b>')
        else
            while IFS=$'\t' read -r sn _ cidr; do
                subnets+=("$sn") subnet_cidrs+=("$cidr")
            done < <(default_subnets || die "could not list the subnets of $vpc")
            [ ${#subnets[@]} -ge 2 ] || die "the default VPC $vpc has ${#subnets[@]} default subnet(s); the larger
  topology needs two availability zones (aws ec2 create-default-subnet --availability-zone ZONE)"
            info "subnets: ${subnets[*]} (${subnet_cidrs[*]})"
        fi
        follow_profile=$(ensure_follow_profile)
        ensure_launch_template "$work_dir/web.sh.gz"
        ensure_web_group "$web_count" "${subnets[@]}"
        mapfile -t instance_ids < <(wait_web_group "$web_count")
    else
        ensure_instances web "$web_count" "$sg_web" "$work_dir/web.sh.gz"
    fi
    wait_running web "${instance_ids[@]}"
    web_lines=$(running_instances web) || die "could not list the web servers"
    while IFS=$'\t' read -r id state priv pub role tport tbackends _; do
        [ "$priv" != None ] || die "web server $id has no private IP"
        [[ " ${instance_ids[*]} " == *" $id "* ]] || continue   # one the group is replacing
        backends+=("$priv:$WEB_PORT")
    done <<<"$web_lines"
    if [ "$web_asg" = 1 ] && [ "$dry_run" != 1 ]; then
        # numeric order, as pibl-follow writes them: its first run changes nothing
        mapfile -t backends < <(printf '%s\n' "${backends[@]}" | sort -t . -k 1,1n -k 2,2n -k 3,3n -k 4,4n)
    fi
    [ "$dry_run" = 1 ] || info "web servers: ${backends[*]}"

    if [ "$dry_run" != 1 ]; then
        render_pibl_userdata "$work_dir/pibl.sh" "$pibl_mode" "${backends[@]}"
        pibl_ud_size=$(compress_userdata "$work_dir/pibl.sh" "$work_dir/pibl.sh.gz")
        [ "$pibl_ud_size" -le "$USERDATA_MAX" ] || die "PIBL's user-data is $pibl_ud_size bytes gzipped, over $USERDATA_MAX"
        info "PIBL user-data: $pibl_ud_size bytes gzipped (limit $USERDATA_MAX)"
    fi
    ensure_instances pibl "$proxies" "$sg_pibl" "$work_dir/pibl.sh.gz" \
        "Port=$port" "Ttl=$ttl" "Backends=${backends[*]}"
    wait_running pibl "${instance_ids[@]}"
    local pibl_ids=("${instance_ids[@]}") url_host
    pibl_lines=$(running_instances pibl) || die "could not list the PIBL instances"
    IFS=$'\t' read -r id state priv pub role tport tbackends _ <<<"$(head -n 1 <<<"$pibl_lines")"
    [ "$pub" != None ] || die "PIBL instance $id has no public IP (does the default subnet assign them?)"
    if [ "$dry_run" != 1 ] && [ "$web_asg" != 1 ] && [ "$tbackends" != "${backends[*]}" ]; then
        warn "PIBL ($id) was configured for \"$tbackends\" but the web servers are now \"${backends[*]}\";
  run scripts/aws-destroy.sh and deploy again to rebuild it (or deploy with --web-asg, whose proxies follow the group)"
    fi
    if [ "$tport" != None ] && [ "$tport" != "$port" ]; then
        warn "PIBL ($id) was deployed on port $tport, not $port; keeping it"
        port=$tport
    fi
    url_host=$pub
    if [ "$proxies" -gt 1 ]; then
        local c
        for c in "${subnet_cidrs[@]}"; do
            allow_ingress "$sg_pibl" "PIBL port $port from the load balancer's subnet $c (health checks)" \
                --protocol tcp --port "$port" --cidr "$c"
        done
        url_host=$(ensure_load_balancer "${subnets[@]}")
        sync_targets "${pibl_ids[@]}"
    fi

    local p_id p_pub first_web=$web_lines
    while IFS=$'\t' read -r p_id _ _ p_pub _; do
        [ "$p_pub" != None ] || die "PIBL instance $p_id has no public IP"
        deliver_by_ssh "$p_id" "$p_pub" "$first_web" "${backends[@]}"
        first_web=""                      # the web servers get the app once
    done <<<"$pibl_lines"
    if [ "$dry_run" = 1 ]; then
        print_plan
        return 0
    fi

    local url="http://$url_host:$port/" rc=0
    if [ "$wait_http" = 1 ]; then
        wait_for_http "$url" || rc=1
    fi
    local ssh_cmd="ssh -i $pem $ssh_user@$pub"
    cat <<EOF

PIBL deployment "$project" in $region
  URL:        $url
  Source:     web app $web_mode; PIBL $pibl_mode$(source_detail "$pibl_mode")
  SSH:        $ssh_cmd
  Log:        $ssh_cmd tail -f $PIBL_HOME/pibl.log
              $ssh_cmd sudo journalctl -u pibl -f
  Setup log:  $ssh_cmd sudo cat /var/log/pibl-setup.log
  Web:        ${backends[*]} (private; HTTP from PIBL only)$(topology_lines "$pibl_lines")
  Status:     scripts/aws-status.sh --region $region --project $project
  Remove:     scripts/aws-destroy.sh --region $region --project $project
EOF
    if [ "$rc" -ne 0 ]; then
        die "PIBL did not answer at $url within $wait_timeout s. The instances exist; look at
  the setup log above, or re-run this script to keep waiting (it creates nothing twice)."
    fi
}

main "$@"
