# aws-cluster.sh - the larger topology of scripts/aws-deploy.sh, sourced by
# aws-deploy.sh, aws-status.sh and aws-destroy.sh: several PIBL instances
# behind a Network Load Balancer, and the web servers in an Auto Scaling group.
#
#   - load balancer PROJECT-nlb: internet-facing, type network, in the first
#     CLUSTER_AZS default subnets (one per availability zone);
#   - target group PROJECT-pibl: TCP on PIBL's port, instance targets, a TCP
#     health check on that port (PIBL itself accepting, whatever its
#     backends do); listener TCP on PIBL's port forwarding to it;
#   - launch template PROJECT-web (the web user-data, IMDSv2) and Auto Scaling
#     group PROJECT-web of M instances over the same subnets, tagged Project and
#     Role=web at launch like the plain instances;
#   - role and instance profile PROJECT-follow for the PIBL instances: it may
#     only read (autoscaling:DescribeAutoScalingGroups, ec2:DescribeInstances);
#     pibl-follow on each PIBL host uses it to track the group.
# Everything is found by name (and the Project tag where AWS keeps one), so a
# re-run finds what exists. Needs the globals of the calling script: project,
# region, dry_run, aws_run (aws-lib.sh) and, to deploy, vpc, port, ami,
# instance_type, key_name, sg_web.
# shellcheck shell=bash disable=SC2154  # the globals are the calling script's

readonly CLUSTER_AZS=3                # availability zones used at most (2 at least)
readonly FOLLOW_POLICY=pibl-follow-read-only  # the role's inline policy

nlb_name() { printf '%s-nlb\n' "$project"; }
tg_name() { printf '%s-pibl\n' "$project"; }
asg_name() { printf '%s-web\n' "$project"; }
lt_name() { printf '%s-web\n' "$project"; }
follow_name() { printf '%s-follow\n' "$project"; }

# or_empty VALUE - print VALUE, or nothing for the CLI's "None".
or_empty() {
    [ "$1" = None ] || printf '%s\n' "$1"
}

# ---------------------------------------------------------------- lookups

# find_nlb - print "ARN<TAB>DNS<TAB>STATE" of PROJECT-nlb, or nothing.
find_nlb() {
    local out
    out=$(aws_run elbv2 describe-load-balancers \
        --query "LoadBalancers[?LoadBalancerName=='$(nlb_name)'].[LoadBalancerArn,DNSName,State.Code]" \
        --output text) || return 1
    or_empty "$out"
}

# find_target_group - print the ARN of PROJECT-pibl, or nothing.
find_target_group() {
    local out
    out=$(aws_run elbv2 describe-target-groups \
        --query "TargetGroups[?TargetGroupName=='$(tg_name)'].TargetGroupArn" --output text) || return 1
    or_empty "$out"
}

# find_listeners NLB_ARN - print the ARNs of the load balancer's listeners.
find_listeners() {
    local out
    out=$(aws_run elbv2 describe-listeners --load-balancer-arn "$1" \
        --query 'Listeners[].ListenerArn' --output text) || return 1
    or_empty "$out" | tr '\t' '\n'
}

# find_asg - print "MIN<TAB>MAX<TAB>DESIRED" of PROJECT-web, or nothing.
find_asg() {
    local out
    out=$(aws_run autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$(asg_name)" \
        --query 'AutoScalingGroups[].[MinSize,MaxSize,DesiredCapacity]' --output text) || return 1
    or_empty "$out"
}

# asg_instances - print "ID<TAB>LIFECYCLE<TAB>HEALTH<TAB>AZ" of the group's instances.
asg_instances() {
    local out
    out=$(aws_run autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$(asg_name)" \
        --query 'AutoScalingGroups[].Instances[].[InstanceId,LifecycleState,HealthStatus,AvailabilityZone]' \
        --output text) || return 1
    or_empty "$out" | LC_ALL=C sort
}

# find_launch_template - print the id of PROJECT-web, or nothing.
find_launch_template() {
    local out
    out=$(aws_run ec2 describe-launch-templates \
        --query "LaunchTemplates[?LaunchTemplateName=='$(lt_name)'].LaunchTemplateId" --output text) || return 1
    or_empty "$out"
}

# find_role - print the name of role PROJECT-follow, or nothing.
find_role() {
    local out
    out=$(aws_run iam list-roles --query "Roles[?RoleName=='$(follow_name)'].RoleName" --output text) || return 1
    or_empty "$out"
}

# find_instance_profile - print "NAME<TAB>ROLE..." of profile PROJECT-follow, or nothing.
find_instance_profile() {
    local out
    out=$(aws_run iam list-instance-profiles \
        --query "InstanceProfiles[?InstanceProfileName=='$(follow_name)'].[InstanceProfileName,Roles[].RoleName]" \
        --output text) || return 1
    or_empty "$out" | tr '\n' '\t' | sed 's/\t$/\n/'
}

# default_subnets - print "SUBNET<TAB>AZ<TAB>CIDR" of the default VPC's default
# subnets, one per zone, sorted by zone, at most CLUSTER_AZS of them.
default_subnets() {
    local out
    # shellcheck disable=SC2054  # the commas belong to the filter
    out=$(aws_run ec2 describe-subnets --filters "Name=vpc-id,Values=$vpc" Name=default-for-az,Values=true \
        --query 'Subnets[].[SubnetId,AvailabilityZone,CidrBlock]' --output text) || return 1
    or_empty "$out" | sort -t $'\t' -k 2,2 | head -n "$CLUSTER_AZS"
}

# ---------------------------------------------------------------- deploy

# ensure_follow_profile - make sure role and instance profile PROJECT-follow
# exist, the role trusted by EC2 with the read-only inline policy, the profile
# holding the role. Prints the profile's name.
ensure_follow_profile() {
    local name trust policy
    name=$(follow_name)
    trust='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}'
    policy='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["autoscaling:DescribeAutoScalingGroups","ec2:DescribeInstances"],"Resource":"*"}]}'
    if [ "$dry_run" = 1 ]; then
        plan_aws always iam list-roles --query "Roles[?RoleName=='$name'].RoleName" --output text
        plan_aws "if missing" iam create-role --role-name "$name" --assume-role-policy-document "$trust" \
            --tags "Key=Project,Value=$project"
        plan_aws always iam put-role-policy --role-name "$name" --policy-name "$FOLLOW_POLICY" \
            --policy-document "$policy"
        plan_aws always iam list-instance-profiles --output text \
            --query "InstanceProfiles[?InstanceProfileName=='$name'].[InstanceProfileName,Roles[].RoleName]"
        plan_aws "if missing" iam create-instance-profile --instance-profile-name "$name"
        plan_aws "if missing" iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
        printf '%s\n' "$name"
        return 0
    fi
    local have
    have=$(find_role) || die "could not list the IAM roles"
    if [ -z "$have" ]; then
        aws_run iam create-role --role-name "$name" --assume-role-policy-document "$trust" \
            --tags "Key=Project,Value=$project" >/dev/null || die "could not create IAM role $name"
        info "IAM role $name created" >&2
    fi
    # put-role-policy replaces the policy: the same document every run.
    aws_run iam put-role-policy --role-name "$name" --policy-name "$FOLLOW_POLICY" \
        --policy-document "$policy" || die "could not set the policy of IAM role $name"
    have=$(find_instance_profile) || die "could not list the IAM instance profiles"
    if [ -z "$have" ]; then
        aws_run iam create-instance-profile --instance-profile-name "$name" >/dev/null ||
            die "could not create instance profile $name"
        info "instance profile $name created" >&2
        have=$name
    fi
    if [ "$have" = "$name" ]; then           # a profile without its role
        aws_run iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name" ||
            die "could not add role $name to instance profile $name"
    fi
    printf '%s\n' "$name"
}

# lt_data USERDATA_GZ OUT - write the launch template's data (JSON) to OUT.
lt_data() {
    local ud
    ud=$(base64 -w 0 <"$1")
    cat >"$2" <<EOF
{"ImageId":"$ami","InstanceType":"$instance_type","KeyName":"$key_name",
 "SecurityGroupIds":["$sg_web"],"UserData":"$ud",
 "MetadataOptions":{"HttpTokens":"required","HttpEndpoint":"enabled","HttpPutResponseHopLimit":1}}
EOF
}

# ensure_launch_template USERDATA_GZ - make sure launch template PROJECT-web
# exists with this user-data; a changed one (another AMI, web app or type) is
# a new version, which the group uses for the instances it launches next.
ensure_launch_template() {
    local name id latest data=$work_dir/lt.json
    name=$(lt_name)
    lt_data "$1" "$data"
    if [ "$dry_run" = 1 ]; then
        plan_aws always ec2 describe-launch-templates --output text \
            --query "LaunchTemplates[?LaunchTemplateName=='$name'].LaunchTemplateId"
        plan_aws "if missing" ec2 create-launch-template --launch-template-name "$name" \
            --launch-template-data "file://$data" \
            --tag-specifications "$(tag_spec launch-template web)"
        return 0
    fi
    id=$(find_launch_template) || die "could not list the launch templates"
    if [ -z "$id" ]; then
        id=$(aws_run ec2 create-launch-template --launch-template-name "$name" \
            --launch-template-data "file://$data" --tag-specifications "$(tag_spec launch-template web)" \
            --query LaunchTemplate.LaunchTemplateId --output text) || die "could not create launch template $name"
        info "launch template $name ($id) created"
        return 0
    fi
    latest=$(aws_run ec2 describe-launch-template-versions --launch-template-id "$id" --versions "\$Latest" \
        --query 'LaunchTemplateVersions[0].LaunchTemplateData.[ImageId,InstanceType,UserData]' --output text) ||
        die "could not read launch template $name"
    if [ "$latest" = "$ami"$'\t'"$instance_type"$'\t'"$(base64 -w 0 <"$1")" ]; then
        info "launch template $name ($id) exists, unchanged"
        return 0
    fi
    aws_run ec2 create-launch-template-version --launch-template-id "$id" \
        --launch-template-data "file://$data" --query LaunchTemplateVersion.VersionNumber --output text >/dev/null ||
        die "could not add a version to launch template $name"
    info "launch template $name ($id): new version (the group launches the next instances from it)"
}

# ensure_web_group COUNT SUBNET... - make sure group PROJECT-web exists with
# COUNT instances (min = max = desired) over the subnets, from the latest
# launch template; a re-run with another COUNT scales it.
ensure_web_group() {
    local count=$1 name have zones
    shift
    name=$(asg_name)
    zones=$(IFS=,; printf '%s' "$*")
    local tags=(--tags "Key=Name,Value=$project-web,PropagateAtLaunch=true"
        "Key=Project,Value=$project,PropagateAtLaunch=true" "Key=Role,Value=web,PropagateAtLaunch=true")
    local make=(autoscaling create-auto-scaling-group --auto-scaling-group-name "$name"
        --launch-template "LaunchTemplateName=$(lt_name),Version=\$Latest"
        --min-size "$count" --max-size "$count" --desired-capacity "$count"
        --vpc-zone-identifier "$zones" --health-check-type EC2 "${tags[@]}")
    local scale=(autoscaling update-auto-scaling-group --auto-scaling-group-name "$name"
        --min-size "$count" --max-size "$count" --desired-capacity "$count")
    if [ "$dry_run" = 1 ]; then
        plan_aws always autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$name" \
            --query 'AutoScalingGroups[].[MinSize,MaxSize,DesiredCapacity]' --output text
        plan_aws "if missing" "${make[@]}"
        plan_aws "if another count" "${scale[@]}"
        return 0
    fi
    have=$(find_asg) || die "could not list the Auto Scaling groups"
    if [ -z "$have" ]; then
        aws_run "${make[@]}" || die "could not create Auto Scaling group $name"
        info "web: Auto Scaling group $name created with $count instances over $zones"
    elif [ "$have" != "$count"$'\t'"$count"$'\t'"$count" ]; then
        aws_run "${scale[@]}" || die "could not scale Auto Scaling group $name to $count"
        info "web: Auto Scaling group $name scaled from ${have##*$'\t'} to $count instances"
    else
        info "web: Auto Scaling group $name has $count instances, unchanged"
    fi
}

# wait_web_group COUNT - wait until the group has COUNT InService instances
# (and no others) and print their ids, sorted.
wait_web_group() {
    local count=$1 lines n start now
    if [ "$dry_run" = 1 ]; then
        plan_aws always autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$(asg_name)" \
            --query 'AutoScalingGroups[].Instances[].[InstanceId,LifecycleState,HealthStatus,AvailabilityZone]' \
            --output text
        for ((n = 1; n <= count; n++)); do
            printf '<web-%s>\n' "$n"
        done
        return 0
    fi
    start=$(date +%s)
    while :; do
        lines=$(asg_instances) || die "could not list the instances of group $(asg_name)"
        n=$(grep -c . <<<"$lines" || true)
        if [ "$n" -eq "$count" ] && [ "$(grep -c $'\tInService\t' <<<"$lines" || true)" -eq "$count" ]; then
            cut -f 1 <<<"$lines"
            return 0
        fi
        now=$(date +%s)
        [ $((now - start)) -lt "$wait_timeout" ] ||
            die "group $(asg_name) has not reached $count InService instances within $wait_timeout s:
$lines"
        sleep "$poll_seconds"
    done
}

# ensure_load_balancer SUBNET... - make sure PROJECT-nlb (with its target
# group and listener) exists over these subnets; print its DNS name.
ensure_load_balancer() {
    local nlb tg arn dns listeners
    local make_nlb=(elbv2 create-load-balancer --name "$(nlb_name)" --type network --scheme internet-facing
        --subnets "$@" --tags "Key=Project,Value=$project"
        --query 'LoadBalancers[0].[LoadBalancerArn,DNSName,State.Code]' --output text)
    local make_tg=(elbv2 create-target-group --name "$(tg_name)" --protocol TCP --port "$port"
        --vpc-id "$vpc" --target-type instance --health-check-protocol TCP --health-check-port traffic-port
        --health-check-interval-seconds 10 --healthy-threshold-count 2 --unhealthy-threshold-count 2
        --tags "Key=Project,Value=$project" --query 'TargetGroups[0].TargetGroupArn' --output text)
    if [ "$dry_run" = 1 ]; then
        plan_aws always elbv2 describe-load-balancers --output text \
            --query "LoadBalancers[?LoadBalancerName=='$(nlb_name)'].[LoadBalancerArn,DNSName,State.Code]"
        plan_aws "if missing" "${make_nlb[@]}"
        plan_aws always elbv2 describe-target-groups --output text \
            --query "TargetGroups[?TargetGroupName=='$(tg_name)'].TargetGroupArn"
        plan_aws "if missing" "${make_tg[@]}"
        plan_aws always elbv2 describe-listeners --load-balancer-arn '<nlb-arn>' \
            --query 'Listeners[].ListenerArn' --output text
        plan_aws "if missing" elbv2 create-listener --load-balancer-arn '<nlb-arn>' --protocol TCP \
            --port "$port" --default-actions 'Type=forward,TargetGroupArn=<tg-arn>'
        echo '<nlb-dns-name>'
        return 0
    fi
    nlb=$(find_nlb) || die "could not list the load balancers"
    if [ -z "$nlb" ]; then
        nlb=$(aws_run "${make_nlb[@]}") || die "could not create load balancer $(nlb_name)"
        info "load balancer $(nlb_name) created over $*" >&2
    else
        info "load balancer $(nlb_name) exists, reused" >&2
    fi
    IFS=$'\t' read -r arn dns _ <<<"$nlb"
    tg=$(find_target_group) || die "could not list the target groups"
    if [ -z "$tg" ]; then
        tg=$(aws_run "${make_tg[@]}") || die "could not create target group $(tg_name)"
        info "target group $(tg_name) created (TCP $port, TCP health check)" >&2
    fi
    listeners=$(find_listeners "$arn") || die "could not list the listeners of $(nlb_name)"
    if [ -z "$listeners" ]; then
        aws_run elbv2 create-listener --load-balancer-arn "$arn" --protocol TCP --port "$port" \
            --default-actions "Type=forward,TargetGroupArn=$tg" --query 'Listeners[0].ListenerArn' \
            --output text >/dev/null || die "could not create the listener of $(nlb_name)"
        info "listener TCP $port -> $(tg_name) created" >&2
    fi
    printf '%s\n' "$dns"
}

# sync_targets ID... - make the target group hold exactly these instances.
sync_targets() {
    local tg have id t=()
    if [ "$dry_run" = 1 ]; then
        plan_aws always elbv2 register-targets --target-group-arn '<tg-arn>' --targets "${@/#/Id=}"
        return 0
    fi
    tg=$(find_target_group) || die "could not list the target groups"
    for id in "$@"; do
        t+=("Id=$id")
    done
    aws_run elbv2 register-targets --target-group-arn "$tg" --targets "${t[@]}" ||
        die "could not register the PIBL instances with $(tg_name)"
    have=$(aws_run elbv2 describe-target-health --target-group-arn "$tg" \
        --query 'TargetHealthDescriptions[].Target.Id' --output text) || die "could not list the targets"
    for id in $(or_empty "$have"); do
        if [[ " $* " != *" $id "* ]]; then
            aws_run elbv2 deregister-targets --target-group-arn "$tg" --targets "Id=$id" ||
                die "could not deregister $id from $(tg_name)"
            info "target $id deregistered"
        fi
    done
    info "targets of $(tg_name): $*"
}

# ---------------------------------------------------------------- status

# show_cluster - print the load balancer with its targets' health and the
# group with its instances, or nothing when the project has neither.
show_cluster() {
    local nlb tg asg arn dns state out
    nlb=$(find_nlb) || return 1
    asg=$(find_asg) || return 1
    if [ -n "$nlb" ]; then
        IFS=$'\t' read -r arn dns state <<<"$nlb"
        printf 'Load balancer: %s %s (%s)\n' "$(nlb_name)" "$dns" "$state"
        tg=$(find_target_group) || return 1
        if [ -n "$tg" ]; then
            out=$(aws_run elbv2 describe-target-health --target-group-arn "$tg" \
                --query 'TargetHealthDescriptions[].[Target.Id,TargetHealth.State]' --output text) || return 1
            printf 'Targets of %s:\n' "$(tg_name)"
            or_empty "$out" | LC_ALL=C sort | sed 's/^/  /;s/\t/ /g'
        fi
    fi
    if [ -n "$asg" ]; then
        printf 'Auto Scaling group: %s min %s max %s desired %s\n' "$(asg_name)" \
            "$(cut -f 1 <<<"$asg")" "$(cut -f 2 <<<"$asg")" "$(cut -f 3 <<<"$asg")"
        asg_instances | sed 's/^/  /;s/\t/ /g'
    fi
}

# ---------------------------------------------------------------- destroy

# cluster_lines - print what delete_cluster would delete, one "  KIND NAME" line each.
cluster_lines() {
    local nlb tg lt role prof asg
    nlb=$(find_nlb) || return 1
    tg=$(find_target_group) || return 1
    asg=$(find_asg) || return 1
    lt=$(find_launch_template) || return 1
    prof=$(find_instance_profile) || return 1
    role=$(find_role) || return 1
    [ -z "$nlb" ] || printf '  %-16s %s %s\n' "load balancer" "$(nlb_name)" "$(cut -f 2 <<<"$nlb")"
    [ -z "$tg" ] || printf '  %-16s %s\n' "target group" "$(tg_name)"
    [ -z "$asg" ] || printf '  %-16s %s (%s instances)\n' "auto scaling" "$(asg_name)" "$(cut -f 3 <<<"$asg")"
    [ -z "$lt" ] || printf '  %-16s %s %s\n' "launch template" "$(lt_name)" "$lt"
    [ -z "$prof" ] || printf '  %-16s %s\n' "instance profile" "$(follow_name)"
    [ -z "$role" ] || printf '  %-16s %s\n' "IAM role" "$(follow_name)"
}

# delete_cluster_front - delete the listener, the load balancer (waiting until
# it is gone), the target group, and the Auto Scaling group with its
# instances (waiting until it is gone). Safe when some are missing.
delete_cluster_front() {
    local nlb arn tg l tries
    nlb=$(find_nlb) || die "could not list the load balancers"
    if [ -n "$nlb" ]; then
        arn=$(cut -f 1 <<<"$nlb")
        for l in $(find_listeners "$arn"); do
            aws_run elbv2 delete-listener --listener-arn "$l" || die "could not delete listener $l"
            info "listener deleted"
        done
        aws_run elbv2 delete-load-balancer --load-balancer-arn "$arn" || die "could not delete $(nlb_name)"
        aws_run elbv2 wait load-balancers-deleted --load-balancer-arns "$arn" ||
            die "load balancer $(nlb_name) is still there"
        info "load balancer $(nlb_name) deleted"
    fi
    tg=$(find_target_group) || die "could not list the target groups"
    if [ -n "$tg" ]; then
        # A target group is released a moment after its load balancer.
        for ((tries = 1; ; tries++)); do
            aws_run elbv2 delete-target-group --target-group-arn "$tg" 2>/dev/null && break
            [ "$tries" -lt "$delete_tries" ] || die "could not delete target group $(tg_name)"
            sleep "$poll_seconds"
        done
        info "target group $(tg_name) deleted"
    fi
    if [ -n "$(find_asg)" ]; then
        aws_run autoscaling delete-auto-scaling-group --auto-scaling-group-name "$(asg_name)" --force-delete ||
            die "could not delete Auto Scaling group $(asg_name)"
        for ((tries = 1; ; tries++)); do
            [ -n "$(find_asg)" ] || break
            [ "$tries" -lt "$delete_tries" ] || die "Auto Scaling group $(asg_name) is still being deleted"
            sleep "$poll_seconds"
        done
        info "Auto Scaling group $(asg_name) deleted (it terminates its instances)"
    fi
}

# delete_cluster_back - once the instances are gone: the launch template,
# the instance profile and the role. Safe when some are missing.
delete_cluster_back() {
    local name lt prof
    name=$(follow_name)
    lt=$(find_launch_template) || die "could not list the launch templates"
    if [ -n "$lt" ]; then
        aws_run ec2 delete-launch-template --launch-template-id "$lt" >/dev/null ||
            die "could not delete launch template $(lt_name)"
        info "launch template $(lt_name) deleted"
    fi
    prof=$(find_instance_profile) || die "could not list the instance profiles"
    if [ -n "$prof" ]; then
        if [ "$prof" != "$name" ]; then
            aws_run iam remove-role-from-instance-profile --instance-profile-name "$name" --role-name "$name" ||
                die "could not take role $name out of instance profile $name"
        fi
        aws_run iam delete-instance-profile --instance-profile-name "$name" ||
            die "could not delete instance profile $name"
        info "instance profile $name deleted"
    fi
    if [ -n "$(find_role)" ]; then
        aws_run iam delete-role-policy --role-name "$name" --policy-name "$FOLLOW_POLICY" 2>/dev/null || true
        aws_run iam delete-role --role-name "$name" || die "could not delete IAM role $name"
        info "IAM role $name deleted"
    fi
}
