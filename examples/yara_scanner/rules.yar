rule aws_access_key_id
{
    meta:
        description = "An AWS access key id"
    strings:
        $key = /AKIA[0-9A-Z]{16}/
    condition:
        $key
}

rule private_key_block
{
    strings:
        $pem = "-----BEGIN RSA PRIVATE KEY-----"
        $openssh = "-----BEGIN OPENSSH PRIVATE KEY-----"
    condition:
        any of them
}

rule password_assignment
{
    strings:
        $a = /password\s*[:=]\s*\S+/ nocase
    condition:
        $a
}

rule elf_binary
{
    condition:
        uint32(0) == 0x464c457f
}
