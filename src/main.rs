//! `drainer`: see the README, or `drainer --help`.

fn main() {
    std::process::exit(drainer::startup::run());
}
