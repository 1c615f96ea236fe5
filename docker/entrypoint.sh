#!/usr/bin/env bash
# AniBridge container start-up: what only shell does, then Python decides.
#
# As root: make appuser:appgroup carry PUID:PGID, hand it the data folders (and
# nothing else: the code in APP_DIR stays root's), then exec, as that user,
# `python -m app.migration.start_up run COMMAND...`: it reads the settings, brings the
# database to head (or says why not, in one line, and stops) and replaces itself
# with the command. Started with --user (not root): only that last step.
# PID 1 is tini (docker/Dockerfile), which passes `docker stop` on.
set -euo pipefail

readonly APP_USER="${APP_USER:-appuser}"
readonly APP_GROUP="${APP_GROUP:-appgroup}"
readonly APP_DIR="${APP_DIR:-/app}"
readonly ANIBRIDGE_PYTHON="${ANIBRIDGE_PYTHON:-python}"
export DATA_DIR="${DATA_DIR:-/data}"
export DOWNLOAD_DIR="${DOWNLOAD_DIR:-${DATA_DIR}/downloads/anime}"

log() {
    printf '%s [entrypoint] %s\n' "$(date +%Y-%m-%dT%H:%M:%S%z)" "$*" >&2
}

die() {
    printf '[entrypoint] error: %s\n' "$*" >&2
    exit 1
}

# Moves group and user to the ids (creating them if needed); an id already held
# by another name is shared (--non-unique). The user has no home directory.
ensure_app_account() {
    local uid="$1" gid="$2"
    if ! getent group "$APP_GROUP" >/dev/null; then
        groupadd --non-unique --gid "$gid" "$APP_GROUP"
    elif [[ "$(getent group "$APP_GROUP" | cut -d: -f3)" != "$gid" ]]; then
        groupmod --non-unique --gid "$gid" "$APP_GROUP"
    fi
    if ! getent passwd "$APP_USER" >/dev/null; then
        useradd --non-unique --uid "$uid" --gid "$APP_GROUP" --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin "$APP_USER"
    elif [[ "$(id -u "$APP_USER"):$(id -g "$APP_USER")" != "${uid}:${gid}" ]]; then
        log "changing user ${APP_USER} to uid ${uid}, gid ${gid}"
        usermod --non-unique --uid "$uid" --gid "$APP_GROUP" "$APP_USER"
    fi
}

require_writable_data_dir() {
    mkdir -p "$DATA_DIR" 2>/dev/null || true
    if [[ ! -w "$DATA_DIR" ]]; then
        die "DATA_DIR ${DATA_DIR} is read-only or not writable for uid ${EUID}: mount it read-write"
    fi
}

# Without CHOWN_RECURSIVE only the folder itself, the database's files and the
# backups change owner, so a changed PUID never leaves the database unwritable.
own_data_dir() {
    local owner="$1" recursive="$2" database_file="$3"
    if [[ "$recursive" == true ]]; then
        chown -R "$owner" "$DATA_DIR"
        return
    fi
    chown "$owner" "$DATA_DIR"
    find "$DATA_DIR" -maxdepth 1 -name "${database_file}*" -exec chown "$owner" {} +
    if [[ -d "${DATA_DIR}/backups" ]]; then
        chown -R "$owner" "${DATA_DIR}/backups"
    fi
}

# Creates a folder for the app user with its parents: the ones created here and
# the ones inside DATA_DIR become the user's, others (/, /mnt...) keep their owner.
ensure_owned_dir() {
    local owner="$1" folder="$2" parent
    local owned=("$folder")
    parent="$(dirname -- "$folder")"
    while [[ "$parent" != / && "$parent" != . ]]; do
        if [[ ! -e "$parent" || "$parent" == "$DATA_DIR"/* ]]; then
            owned+=("$parent")
        fi
        parent="$(dirname -- "$parent")"
    done
    mkdir -p -- "$folder"
    chown "$owner" -- "${owned[@]}"
}

prepare_as_root() {
    local settings uid gid recursive database_file
    settings="$("$ANIBRIDGE_PYTHON" -m app.migration.start_up ids)"
    read -r uid gid recursive database_file <<<"$settings"
    ensure_app_account "$uid" "$gid"
    require_writable_data_dir
    own_data_dir "${uid}:${gid}" "$recursive" "$database_file"
    ensure_owned_dir "${uid}:${gid}" "$DOWNLOAD_DIR"
    if [[ -n "${QBIT_PUBLIC_SAVE_PATH:-}" ]]; then
        ensure_owned_dir "${uid}:${gid}" "$QBIT_PUBLIC_SAVE_PATH"
    fi
}

main() {
    cd "$APP_DIR"
    if ((EUID != 0)); then
        log "running as uid ${EUID}, not root: skipping user and ownership setup"
        require_writable_data_dir
        exec "$ANIBRIDGE_PYTHON" -m app.migration.start_up run "$@"
    fi
    prepare_as_root
    exec gosu "${APP_USER}:${APP_GROUP}" "$ANIBRIDGE_PYTHON" -m app.migration.start_up run "$@"
}

main "$@"
