use std::process::ExitCode;

fn main() -> ExitCode {
    kiln::main(std::env::args_os())
}
