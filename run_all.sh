#!/usr/bin/env bash
# The whole study: ./run_all.sh [--quick | --suite FILE] [sweep options...]
#
# On a fresh clone it makes a virtual environment (.venv) and installs the project into it, then
# runs the default suite (benchmarks/default.toml; --quick: benchmarks/quick.toml, a subset that
# takes a few minutes; --suite FILE: another suite file), then writes the plots and summary and
# says where they are. Runs already complete are skipped, so running it again resumes an
# interrupted study. Other arguments pass through to `python -m forgetting.sweep` (see --help there): --workers N, --results-dir DIR,
# --data-dir DIR, --executor ray [--ray-address ADDR], ... It exits non-zero when any run failed,
# after finishing the others.
#
# Environment: PYTHON (the interpreter that makes .venv, default python3); FORGETTING_PYTHON (an
# interpreter that already has the project's dependencies: no .venv, no install); pip's own
# settings, e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for CPU-only torch.
set -euo pipefail
called_from="$PWD"
# how the sweep's summary names this command (e.g. "get their data: ./run_all.sh --quick --download")
FORGETTING_RERUN_COMMAND="./run_all.sh${*:+ $*}"
export FORGETTING_RERUN_COMMAND
cd "$(dirname "$0")"

suite=benchmarks/default.toml
args=()
extras="text,avalanche"  # the default suite has a text experiment; avalanche for its comparisons
given_suite=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) suite=benchmarks/quick.toml ;;
        --suite) [ $# -ge 2 ] || { echo "run_all.sh: --suite needs a suite file" >&2; exit 2; }
                 given_suite="$2"; shift ;;
        --suite=*) given_suite="${1#--suite=}" ;;
        *) args+=("$1") ;;
    esac
    shift
done
if [ -n "$given_suite" ]; then  # a path relative to where run_all.sh was called from
    case "$given_suite" in /*) suite="$given_suite" ;; *) suite="$called_from/$given_suite" ;; esac
fi
case " ${args[*]-} " in *" --executor ray "*|*" --executor=ray "*) extras="$extras,ray" ;; esac

if [ -n "${FORGETTING_PYTHON:-}" ]; then
    py="$FORGETTING_PYTHON"
else
    venv=.venv
    py="$venv/bin/python"
    if [ ! -x "$py" ]; then
        echo "run_all.sh: making a virtual environment in $venv"
        "${PYTHON:-python3}" -m venv "$venv"
        "$py" -m pip install --quiet --upgrade pip
    fi
    # Install (again) when pyproject.toml, constraints.txt or the extras changed since the last install.
    stamp="$("$py" -c 'import hashlib,sys; print(hashlib.sha1(open("pyproject.toml","rb").read()+open("constraints.txt","rb").read()).hexdigest()+sys.argv[1])' "$extras")"
    if [ "$(cat "$venv/.forgetting-installed" 2>/dev/null)" != "$stamp" ]; then
        echo "run_all.sh: installing the project and its dependencies into $venv (pip install -c constraints.txt -e .[$extras])"
        "$py" -m pip install --quiet -c constraints.txt -e ".[$extras]"
        echo "$stamp" > "$venv/.forgetting-installed"
    fi
fi

echo "run_all.sh: running $suite"
status=0
"$py" -m forgetting.sweep "$suite" ${args[@]+"${args[@]}"} || status=$?
if [ "$status" -ne 0 ]; then
    echo "run_all.sh: finished with failures (exit code $status); the lines above list them" >&2
fi
exit "$status"
