#!/usr/bin/env bash
# AniBridge container start-up.
#
# As root: make appuser:appgroup carry PUID:PGID, hand it the data folders (and
# nothing else: the code in APP_DIR stays root's), upgrade the database schema
# as that user, then run the command as that user. Started with --user (not
# root): only the upgrade and the command, as that user.
# The upgrade is `alembic upgrade head`, skipped when the fast stdlib-only check
# `python -m app.migration.at_head` finds the database already at head; either way the
# service is then told not to upgrade again (it only checks the revision).
# Nothing is ever deleted. A failed upgrade stops the container with the
# upgrade's exit status, and the command is not run.
set -euo pipefail

readonly APP_USER="${APP_USER:-appuser}"
readonly APP_GROUP="${APP_GROUP:-appgroup}"
readonly APP_DIR="${APP_DIR:-/app}"
readonly ANIBRIDGE_PYTHON="${ANIBRIDGE_PYTHON:-python}"
readonly DATABASE_FILE_NAME="anibridge_jobs.db"
readonly MAX_ID=4294967294
export DATA_DIR="${DATA_DIR:-/data}"
export DOWNLOAD_DIR="${DOWNLOAD_DIR:-${DATA_DIR}/downloads/anime}"
QBIT_PUBLIC_SAVE_PATH="${QBIT_PUBLIC_SAVE_PATH:-}"
PUID="${PUID:-1000}"
PGID="${PGID:-1000}"

log() {
    printf '%s [entrypoint] %s\n' "$(date +%Y-%m-%dT%H:%M:%S%z)" "$*" >&2
}

die() {
    local status="$1"
    shift
    printf '[entrypoint] error: %s\n' "$*" >&2
    exit "$status"
}

# Prints "true" or "false" for a boolean variable; exits 2 on anything else.
parse_bool() {
    local name="$1" raw="$2"
    case "${raw,,}" in
        true | 1 | yes | on) echo true ;;
        false | 0 | no | off) echo false ;;
        *) die 2 "${name}='${raw}' is not a boolean: use true or false" ;;
    esac
}

# Prints the id without leading zeros; exits 2 unless it is a whole number in range.
parse_id() {
    local name="$1" raw="$2"
    if [[ ! "$raw" =~ ^[0-9]{1,10}$ ]] || ((10#$raw > MAX_ID)); then
        die 2 "${name}='${raw}' is not valid: use a numeric id from 0 to ${MAX_ID}"
    fi
    echo "$((10#$raw))"
}

# Name of the group or user (database "group" or "passwd") holding a numeric id, if any.
name_holding_id() {
    local database="$1" id="$2"
    getent "$database" "$id" | cut -d: -f1 || true
}

ensure_app_group() {
    local holder
    holder="$(name_holding_id group "$PGID")"
    if [[ -n "$holder" && "$holder" != "$APP_GROUP" ]]; then
        log "gid ${PGID} already belongs to group '${holder}'; ${APP_GROUP} shares it"
    fi
    if ! getent group "$APP_GROUP" >/dev/null; then
        log "creating group ${APP_GROUP} with gid ${PGID}"
        groupadd --non-unique --gid "$PGID" "$APP_GROUP"
    elif [[ "$(getent group "$APP_GROUP" | cut -d: -f3)" != "$PGID" ]]; then
        log "changing the gid of group ${APP_GROUP} to ${PGID}"
        groupmod --non-unique --gid "$PGID" "$APP_GROUP"
    fi
}

# The user has no home directory: usermod would otherwise re-own files in it.
ensure_app_user() {
    local holder
    holder="$(name_holding_id passwd "$PUID")"
    if [[ -n "$holder" && "$holder" != "$APP_USER" ]]; then
        log "uid ${PUID} already belongs to user '${holder}'; ${APP_USER} shares it"
    fi
    if ! getent passwd "$APP_USER" >/dev/null; then
        log "creating user ${APP_USER} with uid ${PUID}"
        useradd --non-unique --uid "$PUID" --gid "$APP_GROUP" --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin "$APP_USER"
    elif [[ "$(id -u "$APP_USER")" != "$PUID" || "$(id -g "$APP_USER")" != "$PGID" ]]; then
        log "changing user ${APP_USER} to uid ${PUID}, gid ${PGID}"
        usermod --non-unique --uid "$PUID" --gid "$APP_GROUP" "$APP_USER"
    fi
}

# A read-only DATA_DIR would make every later step fail with a less clear message.
require_writable_data_dir() {
    if [[ ! -w "$DATA_DIR" ]]; then
        die 1 "DATA_DIR ${DATA_DIR} is read-only or not writable for uid ${EUID}: mount it read-write"
    fi
}

# Without CHOWN_RECURSIVE only the folder itself, the database's files and the
# backups change owner, so a changed PUID never leaves the database unwritable.
own_data_dir() {
    local recursive="$1"
    if [[ "$recursive" == true ]]; then
        log "giving ${DATA_DIR} (recursively) to ${PUID}:${PGID}"
        chown -R "${PUID}:${PGID}" "$DATA_DIR"
        return
    fi
    log "giving ${DATA_DIR}, its database files and backups to ${PUID}:${PGID}"
    chown "${PUID}:${PGID}" "$DATA_DIR"
    find "$DATA_DIR" -maxdepth 1 -name "${DATABASE_FILE_NAME}*" \
        -exec chown "${PUID}:${PGID}" {} +
    if [[ -d "${DATA_DIR}/backups" ]]; then
        chown -R "${PUID}:${PGID}" "${DATA_DIR}/backups"
    fi
}

# Creates a folder owned by the app user, with its parents: the ones created
# here and the ones inside DATA_DIR become the user's, folders that already
# existed outside DATA_DIR (/, /mnt...) keep their owner.
ensure_owned_dir() {
    local folder="$1" parent
    local owned=("$folder")
    parent="$(dirname -- "$folder")"
    while [[ "$parent" != / && "$parent" != . ]]; do
        if [[ ! -e "$parent" || "$parent" == "$DATA_DIR"/* ]]; then
            owned+=("$parent")
        fi
        parent="$(dirname -- "$parent")"
    done
    mkdir -p -- "$folder"
    chown "${PUID}:${PGID}" -- "${owned[@]}"
}

prepare_as_root() {
    local recursive
    recursive="$(parse_bool CHOWN_RECURSIVE "${CHOWN_RECURSIVE:-true}")"
    PUID="$(parse_id PUID "$PUID")"
    PGID="$(parse_id PGID "$PGID")"
    ensure_app_group
    ensure_app_user
    mkdir -p "$DATA_DIR"
    require_writable_data_dir
    own_data_dir "$recursive"
    ensure_owned_dir "$DOWNLOAD_DIR"
    if [[ -n "$QBIT_PUBLIC_SAVE_PATH" ]]; then
        ensure_owned_dir "$QBIT_PUBLIC_SAVE_PATH"
    fi
}

# What runs a program as the app user: gosu as root, nothing otherwise (already that user).
if ((EUID == 0)); then
    AS_APP_USER=(gosu "${APP_USER}:${APP_GROUP}")
else
    AS_APP_USER=()
fi
readonly AS_APP_USER

# True when the command ("$2"...) is `anibridge SUBCOMMAND` ("$1"), by any path to anibridge.
is_anibridge() {
    [[ "$(basename -- "$2")" == anibridge && "${3:-}" == "$1" ]]
}

# Runs a command in the background and passes SIGTERM and SIGINT on to it, so that
# `docker stop` during a long upgrade stops it at once (its transaction rolls back)
# instead of after Docker's 10 s grace period: as PID 1, bash itself ignores them.
# Sets STOPPED=true when such a signal arrived.
STOPPED=false
run_passing_signals() {
    local child status=0
    "$@" &
    child=$!
    trap 'STOPPED=true; kill -TERM "$child" 2>/dev/null || true' TERM INT
    # `wait` returns early when a trapped signal arrives; the child may still be running.
    while kill -0 "$child" 2>/dev/null; do
        status=0
        wait "$child" || status=$?
    done
    trap - TERM INT
    return "$status"
}

# The fast check says whether the database is certainly at head (and prints the
# revision); when it cannot, `alembic upgrade head` runs: it upgrades, or says why not.
upgrade_to_head() {
    local revision status=0
    cd "$APP_DIR"
    if revision="$("${AS_APP_USER[@]}" "$ANIBRIDGE_PYTHON" -m app.migration.at_head)"; then
        log "the database schema is at head (${revision}): nothing to upgrade"
        return
    fi
    log "upgrading the database schema: alembic upgrade head"
    run_passing_signals "${AS_APP_USER[@]}" "$ANIBRIDGE_PYTHON" -m alembic upgrade head ||
        status=$?
    if [[ "$STOPPED" == true ]]; then
        die "$status" "stopped during the database upgrade, which was rolled back; the next start runs it again"
    elif ((status != 0)); then
        die "$status" "the database upgrade failed (exit ${status}); the service was not started"
    fi
}

migrate_database() {
    local enabled
    enabled="$(parse_bool DB_MIGRATE_ON_STARTUP "${DB_MIGRATE_ON_STARTUP:-true}")"
    if [[ "$enabled" == false ]]; then
        log "DB_MIGRATE_ON_STARTUP=${DB_MIGRATE_ON_STARTUP}: not upgrading the database"
        return
    fi
    # `anibridge restore FILE` replaces the database: upgrading the one it replaces first
    # is pointless, and fails for a database left by a newer release, the case restoring
    # fixes. `anibridge migrate` is the upgrade itself.
    if is_anibridge restore "$@" || is_anibridge migrate "$@"; then
        log "running ${2}: not upgrading the database first"
        return
    fi
    upgrade_to_head
    # The schema is at head: the service checks that and does not upgrade again.
    export DB_MIGRATE_ON_STARTUP=false
}

main() {
    if (($# == 0)); then
        die 2 "no command given (the image's default is: anibridge)"
    fi
    if ((EUID == 0)); then
        prepare_as_root
    else
        log "running as uid ${EUID}, not root: skipping user and ownership setup"
        mkdir -p "$DATA_DIR"
        require_writable_data_dir
    fi
    migrate_database "$@"
    log "starting: $*"
    exec "${AS_APP_USER[@]}" "$@"
}

main "$@"
