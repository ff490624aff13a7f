// `json-enrich` in Go (as plugins/json-enrich), built by `wasmill build` (scripts/build-plugins.sh).
// wasmill:world handler
module wit_component

go 1.27
