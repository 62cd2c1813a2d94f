//! Build-time settings of the meter image: Wi-Fi, broker, device account,
//! time server. They come from environment variables at build time (see
//! README.md); unset ones fall back to placeholders with a warning, so CI can
//! build the image without secrets.

const SETTINGS: &[(&str, &str)] = &[
    ("WATTSON_WIFI_SSID", "wattson"),
    ("WATTSON_WIFI_PASSWORD", ""),
    ("WATTSON_BROKER", "192.168.1.10:1883"),
    ("WATTSON_DEVICE_ID", "meter-0001"),
    ("WATTSON_DEVICE_SECRET", ""),
    ("WATTSON_TABLE", "power_consumption"),
    ("WATTSON_NTP", "pool.ntp.org"),
];

fn main() {
    for (name, default) in SETTINGS {
        println!("cargo:rerun-if-env-changed={name}");
        match std::env::var(name) {
            Ok(v) => println!("cargo:rustc-env={name}={v}"),
            Err(_) => {
                if name.ends_with("SSID") || name.ends_with("SECRET") || name.ends_with("BROKER") {
                    println!("cargo:warning={name} is not set; the image uses `{default}`");
                }
                println!("cargo:rustc-env={name}={default}");
            }
        }
    }
}
