//! The iPXE scripts, as pure functions of the node and the configuration. Every value that
//! lands in a script is validated upstream (MACs, hostnames, kernel arguments, URLs built from
//! IP addresses), so nothing here can inject an iPXE command.

use super::settings::LocalBoot;

/// What the script for one MAC does. Every script is self-contained: it runs as iPXE's top-level
/// image, either handed out by DHCP (`/ipxe/{mac}` as the boot file) or put in `boot.ipxe`'s
/// place by `chain --replace`, so its `exit` leaves iPXE, and it asks again on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Script {
    /// PXE-boot Flatcar's live image with the node's install Ignition.
    Install {
        hostname: String,
        mac: String,
        kernel_url: String,
        initrd_url: String,
        initrd_name: String,
        kernel_args: Vec<String>,
        /// This script's own URL, fetched again if the installer cannot be booted.
        again_url: String,
    },
    /// Boot from the local disk.
    Local {
        hostname: String,
        note: String,
        local_boot: LocalBoot,
    },
    /// Not registered: say so, wait, ask again.
    Unknown {
        mac: String,
        retry_secs: u32,
        again_url: String,
    },
}

/// `GET /boot.ipxe`: for any DHCP server that points iPXE at one URL for every machine. It
/// puts the machine's own script in its place (`chain --replace`, so that script's `exit`
/// leaves iPXE rather than returning here), retrying every 10 s while that fails.
pub fn generic(base_url: &str) -> String {
    format!(
        "#!ipxe\n\
         # lacave: this machine's own script takes this one's place\n\
         :start\n\
         chain --replace --autofree {base_url}/ipxe/${{mac:hexhyp}} || goto retry\n\
         :retry\n\
         echo lacave: cannot fetch the script for ${{mac}} from {base_url}; retrying in 10 s\n\
         sleep 10\n\
         goto start\n"
    )
}

pub fn render(script: &Script) -> String {
    match script {
        Script::Install {
            hostname,
            mac,
            kernel_url,
            initrd_url,
            initrd_name,
            kernel_args,
            again_url,
        } => format!(
            "#!ipxe\n\
             echo lacave: installing Flatcar on {hostname} ({mac})\n\
             kernel {kernel_url} {args} || goto failed\n\
             initrd --name {initrd_name} {initrd_url} || goto failed\n\
             boot || goto failed\n\
             :failed\n\
             echo lacave: cannot boot the installer; asking again in 10 s\n\
             sleep 10\n\
             chain --replace --autofree {again_url} || goto failed\n",
            args = kernel_args.join(" ")
        ),
        // Leaves iPXE so the firmware moves on to its next boot device: `exit 1` on UEFI
        // (OVMF under QEMU went silent after a plain `exit`, see docs/src/boot-flow.md), `exit`
        // or `sanboot` on BIOS.
        Script::Local {
            hostname,
            note,
            local_boot,
        } => {
            let bios = match local_boot {
                LocalBoot::Exit => "exit\n",
                LocalBoot::Sanboot => "sanboot --no-describe --drive 0x80 || exit\n",
            };
            format!(
                "#!ipxe\n\
                 echo lacave: {hostname} {note}: booting from the local disk\n\
                 iseq ${{platform}} efi && exit 1 ||\n\
                 {bios}"
            )
        }
        Script::Unknown {
            mac,
            retry_secs,
            again_url,
        } => format!(
            "#!ipxe\n\
             echo lacave: this machine ({mac}) is not registered; nothing will be installed.\n\
             echo lacave: register it with: lacave node add --mac {mac} --hostname NAME --ip ADDRESS --role worker\n\
             :again\n\
             echo lacave: asking again in {retry_secs} s\n\
             sleep {retry_secs}\n\
             chain --replace --autofree {again_url} || goto again\n"
        ),
    }
}
