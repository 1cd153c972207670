fn main() {
    println!("fsmon");
}
