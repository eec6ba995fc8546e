//! The `other-world` test plugin: a component of the `greeter` world rather
//! than `executor`, which the host must refuse to load.

mod bindings {
    //! Rust bindings generated from the `greeter` world.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({ world: "greeter", path: "wit" });
}

use bindings::Guest;

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("Hello, {name}!")
    }
}

bindings::export!(Greeter with_types_in bindings);
