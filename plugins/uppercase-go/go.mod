// `uppercase` in Go (as plugins/uppercase), built by `wasmill build` (scripts/build-plugins.sh).
// wasmill:world handler
module wit_component

go 1.27
