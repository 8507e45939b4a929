# bash completion for svirtctl(1): commands, options, profiles, and the names and UUIDs of the guests
# svirtd isolates (asked of svirtd itself, never of libvirt).

_svirtctl_guests()
{
    # svirtd answers List from memory; a bus that does not answer costs at most 2 s, and no
    # password is ever asked for while completing.
    local -a bus=()
    [[ -n $1 ]] && bus=(--bus-address "$1")
    timeout 2 svirtctl "${bus[@]}" --no-ask-password list --no-legend 2>/dev/null | while IFS=$' \t' read -r uuid name _; do
        printf '%s\n%s\n' "$name" "$uuid"
    done
}

_svirtctl()
{
    # The line as the shell will split it: COMP_WORDS also splits at ':' and '=', which bus
    # addresses are full of.
    local -a words
    read -ra words <<< "${COMP_LINE:0:COMP_POINT}"
    [[ ${COMP_LINE:0:COMP_POINT} == *[[:space:]] ]] && words+=('')
    local cur=${COMP_WORDS[COMP_CWORD]} prev=''
    ((${#words[@]} > 1)) && prev=${words[-2]}
    local commands='list status verify query isolate release cluster'
    local options='--help --version --json --no-legend --no-ask-password --no-progress --timeout --bus-address'
    local profiles='default nosmtp nonet'
    local command='' address='' positional=0 i word

    for ((i = 1; i < ${#words[@]} - 1; i++)); do
        word=${words[i]}
        case $word in
            --bus-address) address=${words[i + 1]}; ((i++)) ;;
            --bus-address=*) address=${word#--bus-address=} ;;
            --profile | --timeout) ((i++)) ;;
            -*) ;;
            *) if [[ -z $command ]]; then command=$word; else ((positional++)); fi ;;
        esac
    done

    case $prev in
        --bus-address | --timeout) return ;;
        --profile) COMPREPLY=($(compgen -W "$profiles" -- "$cur")); return ;;
    esac

    if [[ $cur == -* ]]; then
        [[ $command == isolate ]] && options+=' --profile'
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
        return
    fi
    if [[ -z $command ]]; then
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        return
    fi
    case $command in
        cluster)
            ((positional == 0)) && COMPREPLY=($(compgen -W "state forget-host" -- "$cur"))
            ;;
        query | isolate | release)
            if ((positional == 0)); then
                local IFS=$'\n'
                COMPREPLY=($(compgen -W "$(_svirtctl_guests "${address:-$SVIRT_BUS_ADDRESS}")" -- "$cur"))
            fi
            ;;
    esac
}

complete -F _svirtctl svirtctl
