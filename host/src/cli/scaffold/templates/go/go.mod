// A Wasmill {world} in Go. `wasmill build .` generates the bindings of wit/ (`wit-bindgen go`)
// beside a copy of the .go files in build/go, builds them with Go for wasip1 and makes a
// component of the result. The module is named as the generated bindings import it.
// wasmill:world {world}
module wit_component

go 1.27
