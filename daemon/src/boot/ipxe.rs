//! The iPXE scripts, as pure functions of the node and the configuration. Every value that
//! lands in a script is validated upstream (MACs, hostnames, kernel arguments, URLs built from
//! IP addresses), so nothing here can inject an iPXE command.

use super::settings::LocalBoot;

/// What the script for one MAC does.
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
    },
    /// Boot from the local disk.
    Local { hostname: String, note: String },
    /// Not registered: say so, wait, ask again.
    Unknown { mac: String, retry_secs: u32 },
}

/// `GET /boot.ipxe`: chains to the per-MAC script, and acts on how it returns. A script run by
/// `chain` that `exit`s only returns to this one (`exit 1` inside it would read as a failed
/// chain), so the per-MAC script sets `lacave-local` and returns, and leaving iPXE for the
/// local disk happens here, at the top level: `exit 1` on UEFI (the firmware's next boot entry
/// should follow; OVMF under QEMU went silent instead, see README "Boot flow"), `exit` or
/// `sanboot` on BIOS. A script
/// that returns without it (an unknown machine, after its wait) starts over.
pub fn generic(base_url: &str, local_boot: LocalBoot) -> String {
    let bios = match local_boot {
        LocalBoot::Exit => "exit\n",
        LocalBoot::Sanboot => "sanboot --no-describe --drive 0x80 || exit\n",
    };
    format!(
        "#!ipxe\n\
         # lacave: fetch this machine's own script\n\
         :start\n\
         chain --autofree {base_url}/ipxe/${{mac:hexhyp}}?arch=${{buildarch}}&platform=${{platform}} || goto retry\n\
         iseq ${{lacave-local}} 1 && goto local || goto start\n\
         :retry\n\
         echo lacave: cannot fetch the script for ${{mac}} from {base_url}; retrying in 10 s\n\
         sleep 10\n\
         goto start\n\
         :local\n\
         iseq ${{platform}} efi && exit 1 ||\n\
         {bios}"
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
        } => format!(
            "#!ipxe\n\
             echo lacave: installing Flatcar on {hostname} ({mac})\n\
             kernel {kernel_url} {args}\n\
             initrd --name {initrd_name} {initrd_url}\n\
             boot\n",
            args = kernel_args.join(" ")
        ),
        // Returns to boot.ipxe, which leaves iPXE for the disk.
        Script::Local { hostname, note } => format!(
            "#!ipxe\n\
             echo lacave: {hostname} {note}: booting from the local disk\n\
             set lacave-local 1\n\
             exit 0\n"
        ),
        // Returns to boot.ipxe, which asks again.
        Script::Unknown { mac, retry_secs } => format!(
            "#!ipxe\n\
             echo lacave: this machine ({mac}) is not registered; nothing will be installed.\n\
             echo lacave: register it with: lacave node add --mac {mac} --hostname NAME --ip ADDRESS --role worker\n\
             echo lacave: asking again in {retry_secs} s\n\
             sleep {retry_secs}\n\
             exit 0\n"
        ),
    }
}
