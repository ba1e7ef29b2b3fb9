#!/usr/bin/env bash
# aws-deploy.sh - provision PIBL and three replicated web servers on EC2.
#
# What it does: with the AWS CLI and the caller's credentials, in the default
# VPC of one region, it makes sure these exist (creating only what is missing):
#   - an EC2 key pair, imported from a local ed25519 key (made with ssh-keygen
#     if absent), so the private key never travels;
#   - security group PROJECT-pibl: PIBL's port and SSH from the client CIDR;
#   - security group PROJECT-web: HTTP (80) from PROJECT-pibl only;
#   - three web servers (nginx from the distribution, the site from www/,
#     byte-identical on the three);
#   - one PIBL instance that builds PIBL from this repository, writes
#     pibl.cfg with the three private IPs and runs it under systemd.
# The web app and PIBL's source travel inside the user-data when they fit in
# EC2's 16 KB (gzip-compressed; cloud-init decompresses it); what does not fit
# is cloned by the instance from --git-url, or else from the checkout's origin
# remote at its current branch.
# Then it waits until http://PIBL-IP:PORT/ answers and prints how to use it.
#
# Re-running is safe: everything is found again by name and tags (Project,
# Role), launches carry client tokens derived from the PIBL security group id
# (so a repeated call returns the instances it already made, and a deploy after
# aws-destroy.sh, which deletes that group, gets new tokens and a fresh
# deployment).
#
# What it refuses: a region without a default VPC, content over 16 KB with no
# repository to clone it from, stopped instances of the project (start them or
# destroy), an unusable project name, CIDR, port, TTL or git URL. It never
# deletes anything; aws-destroy.sh does that.
#
# Limits: user-data <= 16384 bytes, project name <= 24 characters, one region
# per run, bash >= 4.4.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$script_dir/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=aws-lib.sh
. "$script_dir/aws-lib.sh"

readonly USERDATA_MAX=16384           # bytes, EC2's cap on raw user-data
readonly N_WEB=3                      # web servers, as the assignment asks
readonly WEB_PORT=80                  # the web servers' HTTP port
readonly PIBL_HOME=/var/lib/pibl      # on the instance: cwd, pibl.cfg, cache/, pibl.log
readonly PIBL_BIN=/opt/pibl/bin/pibl  # on the instance: the built binary

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
git_url=${PIBL_GIT_URL:-}
git_ref_set=${PIBL_GIT_REF:+1}
git_ref=${PIBL_GIT_REF:-main}
source_dir=${PIBL_SOURCE_DIR:-$repo_dir}
www_dir=${PIBL_WWW_DIR:-$repo_dir/www}
key_dir=${PIBL_KEY_DIR:-$HOME/.ssh}
wait_timeout=${PIBL_WAIT_TIMEOUT:-900}
poll_seconds=${PIBL_POLL_SECONDS:-10}
wait_http=1
endpoint=${AWS_ENDPOINT_URL:-}
aws_cli=${PIBL_AWS_CLI:-aws}
work_dir=""
instance_ids=()                       # set by ensure_instances
web_mode="" pibl_mode=""              # ship or git, set by choose_delivery
vpc="" ami="" sg_pibl="" sg_web=""    # found or made by main

usage() {
    cat <<EOF
Usage: ${0##*/} [options]

Deploys PIBL and $N_WEB web servers to EC2 (default VPC) and prints the URL.
Safe to re-run: existing resources are found by name and tags and reused.
Remove everything with scripts/aws-destroy.sh (same --region and --project).

Options (environment variable in brackets, then the default):
  -r, --region REGION       AWS region [AWS_REGION, AWS_DEFAULT_REGION] us-east-1
  -i, --instance-type TYPE  EC2 instance type for all four [PIBL_INSTANCE_TYPE] t3.micro
  -k, --key-name NAME       EC2 key pair name [PIBL_KEY_NAME] PROJECT-key;
                            imported from KEY_DIR/NAME.pem (made if missing)
  -c, --client-cidr CIDR    who may reach PIBL's port and SSH [PIBL_CLIENT_CIDR] 0.0.0.0/0
                            (narrow it, e.g. --client-cidr 203.0.113.7/32)
      --ttl SECONDS         PIBL cache TTL, 0..31536000, 0 = no cache [PIBL_TTL] 60
  -p, --project NAME        name and Project tag of everything [PIBL_PROJECT] pibl
      --port PORT           PIBL's listening port [PIBL_PORT] 8080
      --os NAME             al2023 (Amazon Linux 2023), debian12 or ubuntu24 [PIBL_OS] al2023
      --ami-param NAME      public SSM parameter holding the AMI id [PIBL_AMI_PARAM]
                            (default from --os, x86_64; change it for arm64 types)
      --ssh-user USER       login user of the AMI [PIBL_SSH_USER] (from --os)
      --git-url URL         build PIBL from a git clone of URL instead of shipping the
                            source in the user-data [PIBL_GIT_URL]
      --git-ref REF         branch or tag for --git-url [PIBL_GIT_REF] main
      --source-dir DIR      PIBL source to ship [PIBL_SOURCE_DIR] this repository
      --www-dir DIR         the web app for the web servers [PIBL_WWW_DIR] REPO/www
      --key-dir DIR         where the private key lives [PIBL_KEY_DIR] ~/.ssh
      --wait-timeout SECS   how long to wait for PIBL to answer [PIBL_WAIT_TIMEOUT] 900
      --no-wait             do not wait for http://PIBL-IP:PORT/ (e.g. on an emulator)
  -h, --help                this help

AWS_ENDPOINT_URL, when set, is passed as --endpoint-url to every AWS call
(a local EC2 emulator, for instance). AWS_PROFILE selects a CLI profile.

Needs: aws (CLI v1 or v2) with credentials, ssh-keygen, gzip, base64, curl.
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
        --git-url) need_value "$1" $#; git_url=$2; shift ;;
        --git-ref) need_value "$1" $#; git_ref=$2; git_ref_set=1; shift ;;
        --source-dir) need_value "$1" $#; source_dir=$2; shift ;;
        --www-dir) need_value "$1" $#; www_dir=$2; shift ;;
        --key-dir) need_value "$1" $#; key_dir=$2; shift ;;
        --wait-timeout) need_value "$1" $#; wait_timeout=$2; shift ;;
        --no-wait) wait_http=0 ;;
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
    is_uint "$wait_timeout" 0 86400 || die "wait timeout \"$wait_timeout\" must be 0..86400 seconds"
    case $os_name in
    al2023) : "${ami_param:=/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64}" "${ssh_user:=ec2-user}" ;;
    debian12) : "${ami_param:=/aws/service/debian/release/12/latest/amd64}" "${ssh_user:=admin}" ;;
    ubuntu24) : "${ami_param:=/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id}" "${ssh_user:=ubuntu}" ;;
    *) die "unknown --os \"$os_name\" (al2023, debian12 or ubuntu24)" ;;
    esac
    if [ -n "$git_url" ]; then
        check_git_url "$git_url"
    else
        [ -f "$source_dir/Makefile" ] || die "no Makefile in \"$source_dir\" (--source-dir), or use --git-url"
    fi
    [ -d "$www_dir" ] || die "web app folder \"$www_dir\" not found (--www-dir)"
}

# check_git_url URL - refuse a URL the instances could not clone, or one that
# could break out of the generated script's quoting. file:// only makes sense
# for the offline tests (the clone runs on the instance).
check_git_url() {
    [[ "$1" =~ ^(https://|http://|git://|file:///)[^[:space:]\'\"\\\`$]+$ ]] ||
        die "git URL \"$1\" must be an https:// (or http://, git://) URL the instances can clone without credentials"
    [[ "$git_ref" =~ ^[A-Za-z0-9._/-]{1,100}$ ]] || die "git ref \"$git_ref\" looks wrong"
}

# origin_clone_url - print an anonymous clone URL for the source checkout's
# origin remote (git@HOST:PATH becomes https://HOST/PATH), or fail.
origin_clone_url() {
    local url
    command -v git >/dev/null 2>&1 || return 1
    url=$(git -C "$source_dir" remote get-url origin 2>/dev/null) || return 1
    if [[ "$url" =~ ^[A-Za-z0-9._-]+@([A-Za-z0-9.-]+):(.+)$ ]]; then
        url="https://${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
    elif [[ "$url" =~ ^ssh://[A-Za-z0-9._-]+@([A-Za-z0-9.-]+)(:[0-9]+)?/(.+)$ ]]; then
        url="https://${BASH_REMATCH[1]}/${BASH_REMATCH[3]}"
    fi
    printf '%s\n' "$url"
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

# userdata_common_head ROLE - the opening every user-data script shares: strict
# mode, the offline-test seams, the log, and a package installer for dnf or apt.
userdata_common_head() {
    cat <<EOF
#!/bin/bash
# User-data of a $1 instance of project $project, generated by scripts/aws-deploy.sh.
# cloud-init runs it once, as root, at first boot; output in /var/log/pibl-setup.log.
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
    exec > >(tee -a /var/log/pibl-setup.log) 2>&1
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

# render_web_userdata OUT MODE - write the web servers' user-data script (text)
# to OUT: nginx from the distribution, the site (MODE ship: inside the script;
# git: from a clone of git_url) in its document root, an X-Backend header
# naming the host, nginx enabled.
render_web_userdata() {
    local out=$1 mode=$2 files=()
    {
        userdata_common_head web
        cat <<'EOF'

install_packages nginx
if command -v dnf >/dev/null 2>&1; then
    docroot=$root/usr/share/nginx/html   # Amazon Linux, Fedora family
else
    docroot=$root/var/www/html           # Debian, Ubuntu
fi
rm -rf "$docroot"
mkdir -p "$docroot"
EOF
        if [ "$mode" = git ]; then
            printf 'git_url=%q\ngit_ref=%q\n' "$git_url" "$git_ref"
            cat <<'EOF'
install_packages git
tmp_src=$(mktemp -d)
git clone --depth 1 --branch "$git_ref" "$git_url" "$tmp_src"
cp -R "$tmp_src"/www/. "$docroot"/
rm -rf "$tmp_src"
EOF
        else
            printf '# The web app, the same on every web server (from www/).\n'
            mapfile -t files < <(list_www_files "$www_dir")
            [ ${#files[@]} -gt 0 ] || die "web app folder \"$www_dir\" is empty"
            emit_tree "$www_dir" docroot "${files[@]}"
        fi
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
echo "pibl-setup: web server ready $(date -u +%FT%TZ)"
EOF
    } >"$out"
}

# render_pibl_cfg BACKEND... - print pibl.cfg for the given host:port backends.
render_pibl_cfg() {
    local b
    printf '# pibl.cfg - generated by scripts/aws-deploy.sh for project %s.\n' "$project"
    printf '# The backends are the private IPs of the %s web servers.\n' "$N_WEB"
    printf 'listen = 0.0.0.0\nport = %s\n' "$port"
    for b in "$@"; do
        printf 'backend = %s\n' "$b"
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

# render_pibl_userdata OUT MODE BACKEND... - write PIBL's user-data script
# (text) to OUT: build tools, the source (MODE ship: inside the script; git: a
# clone of git_url at git_ref), make pibl, pibl.cfg checked with pibl -t, the
# systemd unit, the service started.
render_pibl_userdata() {
    local out=$1 mode=$2 files=()
    shift 2
    {
        userdata_common_head pibl
        # shellcheck disable=SC2016  # $root is for the generated script
        printf 'pibl_bin=$root%s\npibl_home=$root%s\n' "$PIBL_BIN" "$PIBL_HOME"
        cat <<'EOF'

if command -v dnf >/dev/null 2>&1; then
    install_packages gcc-c++ make
else
    install_packages g++ make
fi
src=$root/opt/pibl/src
rm -rf "$src"
mkdir -p "$src"
EOF
        if [ "$mode" = git ]; then
            printf 'git_url=%q\ngit_ref=%q\n' "$git_url" "$git_ref"
            cat <<'EOF'
install_packages git
git clone --depth 1 --branch "$git_ref" "$git_url" "$src"
EOF
        else
            printf '# PIBL source, shipped from the deploying checkout.\n'
            mapfile -t files < <(list_source_files "$source_dir")
            emit_tree "$source_dir" src "${files[@]}"
        fi
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
if [ "$dry_run" != 1 ]; then
    if ! id pibl >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/pibl --shell /usr/sbin/nologin pibl
    fi
    chown -R pibl:pibl "$pibl_home"
    systemctl daemon-reload
    systemctl enable pibl.service
    systemctl restart pibl.service
fi
echo "pibl-setup: PIBL ready $(date -u +%FT%TZ)"
EOF
    } >"$out"
}

# compress_userdata TEXT OUT - gzip TEXT into OUT, deterministically (no name,
# no time stamp: a retried launch must send identical bytes); print the size.
compress_userdata() {
    gzip -9 -n -c <"$1" >"$2"
    wc -c <"$2" | tr -d ' '
}

# use_git_source WHAT SIZE - the WHAT user-data would be SIZE bytes, too big to
# ship: make sure git_url and git_ref name a repository the instances can
# clone, taking the checkout's origin remote and current branch when the user
# gave no --git-url. Dies with what to do when there is none.
use_git_source() {
    local what=$1 size=$2 origin
    [ -z "$git_url" ] || return 0
    if ! origin=$(origin_clone_url) || ! (check_git_url "$origin") 2>/dev/null; then
        die "$what is $size bytes gzipped, over EC2's $USERDATA_MAX-byte user-data limit,
  and the checkout has no origin remote to clone from. Push the repository where
  the instances can clone it without credentials (a public GitHub repository,
  say) and run again with
    --git-url https://github.com/USER/REPO.git --git-ref BRANCH"
    fi
    git_url=$origin
    if [ -z "$git_ref_set" ]; then
        git_ref=$(git -C "$source_dir" rev-parse --abbrev-ref HEAD 2>/dev/null) || git_ref=""
        if [ -z "$git_ref" ] || [ "$git_ref" = HEAD ]; then
            die "the source checkout is not on a branch; pass --git-ref BRANCH"
        fi
    fi
    check_git_url "$git_url"
    warn "$what is $size bytes gzipped, over EC2's $USERDATA_MAX-byte user-data limit:
  the instances will clone $git_url (branch or tag $git_ref). They get what is
  pushed there, not uncommitted or unpushed changes here."
}

# choose_delivery - decide, before any AWS call, how the web app and PIBL's
# source reach the instances, and check the 16 KB limit with the longest
# possible backend addresses. Sets web_mode and pibl_mode to ship or git.
# Shipping is preferred; git is used when asked (--git-url, for PIBL) or when
# the shipped user-data would be too big. Dies when neither works.
choose_delivery() {
    local size long=255.255.255.255:80
    render_web_userdata "$work_dir/web.sh" ship
    size=$(compress_userdata "$work_dir/web.sh" "$work_dir/web.sh.gz")
    web_mode=ship
    if [ "$size" -gt "$USERDATA_MAX" ]; then
        use_git_source "the web app in $www_dir" "$size"
        web_mode=git
        render_web_userdata "$work_dir/web.sh" git
        compress_userdata "$work_dir/web.sh" "$work_dir/web.sh.gz" >/dev/null
    fi
    pibl_mode=git
    if [ -z "$git_url" ]; then
        render_pibl_userdata "$work_dir/pibl.sh" ship "$long" "$long" "$long"
        size=$(compress_userdata "$work_dir/pibl.sh" "$work_dir/pibl.sh.gz")
        pibl_mode=ship
        if [ "$size" -gt "$USERDATA_MAX" ]; then
            use_git_source "the PIBL source in $source_dir" "$size"
            pibl_mode=git
        fi
    fi
    render_pibl_userdata "$work_dir/pibl.sh" "$pibl_mode" "$long" "$long" "$long"
    size=$(compress_userdata "$work_dir/pibl.sh" "$work_dir/pibl.sh.gz")
    [ "$size" -le "$USERDATA_MAX" ] || die "PIBL's user-data is $size bytes gzipped, over $USERDATA_MAX"
    info "web app: $web_mode ($(wc -c <"$work_dir/web.sh.gz" | tr -d ' ') bytes of user-data); PIBL source: $pibl_mode${git_url:+ ($git_url $git_ref)}"
}

# ---------------------------------------------------------------- AWS steps

# find_default_vpc - print the default VPC id or die.
find_default_vpc() {
    local vpc
    vpc=$(aws_run ec2 describe-vpcs --filters Name=is-default,Values=true \
        --query 'Vpcs[0].VpcId' --output text) || die "could not list the VPCs of $region"
    if [ -z "$vpc" ] || [ "$vpc" = None ]; then
        die "region $region has no default VPC. Create one with:
  aws ec2 create-default-vpc --region $region"
    fi
    printf '%s\n' "$vpc"
}

# find_ami - print the current AMI id from the public SSM parameter, or die.
find_ami() {
    local ami
    ami=$(aws_run ssm get-parameter --name "$ami_param" \
        --query Parameter.Value --output text) || die "could not read SSM parameter $ami_param in $region"
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
    local found pem=$key_dir/$key_name.pem
    found=$(aws_run ec2 describe-key-pairs --filters "Name=key-name,Values=$key_name" \
        --query 'KeyPairs[0].KeyName' --output text) || die "could not list key pairs"
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
    aws_run ec2 import-key-pair --key-name "$key_name" \
        --public-key-material "fileb://$work_dir/key.pub" \
        --tag-specifications "$(tag_spec key-pair key)" \
        --query KeyPairId --output text >/dev/null || die "could not import key pair $key_name"
    info "key pair $key_name imported from $pem"
}

# ensure_security_group ROLE DESCRIPTION - print the id of group PROJECT-ROLE
# in the default VPC, creating it (tagged) if no group has that name and tags.
ensure_security_group() {
    local role=$1 desc=$2 name="$project-$1" id
    id=$(aws_run ec2 describe-security-groups --filters "Name=vpc-id,Values=$vpc" \
        "Name=group-name,Values=$name" "Name=tag:Project,Values=$project" \
        --query 'SecurityGroups[0].GroupId' --output text) || die "could not list security groups"
    if [ -n "$id" ] && [ "$id" != None ]; then
        info "security group $name ($id) exists, reused" >&2
    else
        id=$(aws_run ec2 create-security-group --group-name "$name" --description "$desc" \
            --vpc-id "$vpc" --tag-specifications "$(tag_spec security-group "$role")" \
            --query GroupId --output text) || die "could not create security group $name"
        info "security group $name ($id) created" >&2
    fi
    printf '%s\n' "$id"
}

# allow_ingress GROUP_ID WHAT ARGS... - add one inbound TCP rule; a rule that
# already exists (a re-run) is fine, any other error is fatal.
allow_ingress() {
    local group=$1 what=$2 out
    shift 2
    if out=$(aws_run ec2 authorize-security-group-ingress --group-id "$group" "$@" 2>&1 >/dev/null); then
        info "rule added: $what"
    elif [[ "$out" == *InvalidPermission.Duplicate* ]]; then
        info "rule exists: $what"
    else
        die "could not add rule ($what): $out"
    fi
}

# ensure_instances ROLE COUNT GROUP USERDATA_GZ [TAG=VALUE...] - make sure
# COUNT pending-or-running instances with this Role exist; launch the missing
# ones with IMDSv2 required, tags and a client token. Sets the global array
# instance_ids to their ids (sorted). Exits on error.
ensure_instances() {
    local role=$1 count=$2 group=$3 userdata=$4 have n_have token ids state
    shift 4
    have=$(list_instances "$role" "pending,running,stopping,stopped") || die "could not list instances"
    while IFS=$'\t' read -r _ state _; do
        case $state in
        stopping | stopped)
            die "a $role instance of project $project is $state: start it (aws ec2 start-instances)
  or remove the deployment with scripts/aws-destroy.sh" ;;
        esac
    done <<<"$have"
    n_have=$(grep -c . <<<"$have" || true)
    if [ "$n_have" -lt "$count" ]; then
        # Same PIBL group + same number of survivors = same token: a retried
        # call returns the instances it already made instead of making more.
        token="$project-$role-$sg_pibl-$n_have"
        ids=$(aws_run ec2 run-instances --image-id "$ami" --instance-type "$instance_type" \
            --count "$((count - n_have))" --key-name "$key_name" --security-group-ids "$group" \
            --user-data "fileb://$userdata" \
            --metadata-options HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=1 \
            --tag-specifications "$(tag_spec instance "$role" "$@")" "$(tag_spec volume "$role")" \
            --client-token "$token" --query 'Instances[].InstanceId' --output text) ||
            die "could not launch the $role instances"
        info "$role: launched ${ids//$'\t'/ } (client token $token)"
    else
        info "$role: $n_have instance(s) exist, none launched"
        [ "$n_have" -eq "$count" ] || warn "project $project has $n_have $role instances, expected $count; using them all"
    fi
    have=$(list_instances "$role" "pending,running") || die "could not list instances"
    [ -n "$have" ] || die "no $role instance is pending or running after the launch: a client token of this
  deployment was used by instances that are now terminated. Run scripts/aws-destroy.sh, then deploy again."
    mapfile -t instance_ids < <(cut -f 1 <<<"$have")
}

# wait_running ROLE IDS... - block until the instances run (the CLI's waiter
# polls every 15 s, up to 40 times).
wait_running() {
    local role=$1
    shift
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

    check_cli_and_credentials
    if [ "$client_cidr" = 0.0.0.0/0 ]; then
        warn "PIBL's port $port and SSH will be open to the whole Internet (0.0.0.0/0);
  narrow them with --client-cidr YOUR.PUBLIC.IP/32"
    fi
    vpc=$(find_default_vpc)
    info "default VPC: $vpc"
    ami=$(find_ami)
    info "AMI: $ami ($ami_param)"
    ensure_key_pair

    sg_pibl=$(ensure_security_group pibl "PIBL reverse proxy, project $project")
    sg_web=$(ensure_security_group web "PIBL web servers, HTTP from the PIBL group only, project $project")
    allow_ingress "$sg_pibl" "PIBL port $port from $client_cidr" --protocol tcp --port "$port" --cidr "$client_cidr"
    allow_ingress "$sg_pibl" "SSH from $client_cidr" --protocol tcp --port 22 --cidr "$client_cidr"
    allow_ingress "$sg_web" "HTTP $WEB_PORT from $sg_pibl" --protocol tcp --port "$WEB_PORT" --source-group "$sg_pibl"

    local pibl_lines web_lines backends=() id state priv pub role tport tbackends
    ensure_instances web "$N_WEB" "$sg_web" "$work_dir/web.sh.gz"
    wait_running web "${instance_ids[@]}"
    web_lines=$(list_instances web running) || die "could not list the web servers"
    while IFS=$'\t' read -r id state priv pub role tport tbackends; do
        [ "$priv" != None ] || die "web server $id has no private IP"
        backends+=("$priv:$WEB_PORT")
    done <<<"$web_lines"
    info "web servers: ${backends[*]}"

    render_pibl_userdata "$work_dir/pibl.sh" "$pibl_mode" "${backends[@]}"
    info "PIBL user-data: $(compress_userdata "$work_dir/pibl.sh" "$work_dir/pibl.sh.gz") bytes gzipped (limit $USERDATA_MAX)"
    ensure_instances pibl 1 "$sg_pibl" "$work_dir/pibl.sh.gz" \
        "Port=$port" "Ttl=$ttl" "Backends=${backends[*]}"
    wait_running pibl "${instance_ids[@]}"
    pibl_lines=$(list_instances pibl running) || die "could not list the PIBL instance"
    IFS=$'\t' read -r id state priv pub role tport tbackends <<<"$(head -n 1 <<<"$pibl_lines")"
    [ "$pub" != None ] || die "PIBL instance $id has no public IP (does the default subnet assign them?)"
    if [ "$tbackends" != "${backends[*]}" ]; then
        warn "PIBL ($id) was configured for \"$tbackends\" but the web servers are now \"${backends[*]}\";
  run scripts/aws-destroy.sh and deploy again to rebuild it"
    fi
    if [ "$tport" != None ] && [ "$tport" != "$port" ]; then
        warn "PIBL ($id) was deployed on port $tport, not $port; keeping it"
        port=$tport
    fi

    local url="http://$pub:$port/" pem="$key_dir/$key_name.pem" rc=0
    if [ "$wait_http" = 1 ]; then
        wait_for_http "$url" || rc=1
    fi
    local ssh_cmd="ssh -i $pem $ssh_user@$pub"
    cat <<EOF

PIBL deployment "$project" in $region
  URL:        $url
  SSH:        $ssh_cmd
  Log:        $ssh_cmd tail -f $PIBL_HOME/pibl.log
              $ssh_cmd sudo journalctl -u pibl -f
  Setup log:  $ssh_cmd sudo cat /var/log/pibl-setup.log
  Web:        ${backends[*]} (private; HTTP from PIBL only)
  Status:     scripts/aws-status.sh --region $region --project $project
  Remove:     scripts/aws-destroy.sh --region $region --project $project
EOF
    if [ "$rc" -ne 0 ]; then
        die "PIBL did not answer at $url within $wait_timeout s. The instances exist; look at
  the setup log above, or re-run this script to keep waiting (it creates nothing twice)."
    fi
}

main "$@"
