"""Files that carry provenance, written the way their makers write them, and hostile variants.

C2PA files are signed here with `c2pa-python`'s Builder and a throwaway chain (a root CA and
an ES256 signing certificate made for the test run), so they validate as "valid" (intact,
not on a trust list). Generator metadata is written into the places each generator uses.
"""

from __future__ import annotations

import datetime
import io
import struct
import zlib
from collections.abc import Callable
from functools import cache
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


@cache
def _chain() -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM): a root CA and a claim-signing certificate it issued."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Throwaway Test CA")])

    def usage(ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False)

    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    period = {"not_valid_before": now - datetime.timedelta(days=1), "not_valid_after": now + datetime.timedelta(days=30)}
    root = (x509.CertificateBuilder(subject_name=name("Test Root"), issuer_name=name("Test Root"), public_key=root_key.public_key(),
                                    serial_number=x509.random_serial_number(), **period)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage(True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder(subject_name=name("Test Signer"), issuer_name=root.subject, public_key=key.public_key(),
                                    serial_number=x509.random_serial_number(), **period)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (leaf.public_bytes(pem) + root.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def trust_anchor_pem() -> bytes:
    """The throwaway chain's root certificate: configured as a trust anchor, its signers are "trusted"."""
    chain, _ = _chain()
    return chain[chain.index(b"-----BEGIN CERTIFICATE-----", 1):]


def sign(image: bytes, mime: str, source_type: str | None = "trainedAlgorithmicMedia", generator: str = "test-generator",
         action: str = "c2pa.created") -> bytes:
    """`image` with an embedded C2PA manifest whose action declares `source_type`."""
    import c2pa

    chain, key = _chain()
    entry: dict[str, Any] = {"action": action}
    if source_type is not None:
        entry["digitalSourceType"] = IPTC + source_type
    manifest = {"claim_generator_info": [{"name": generator, "version": "1.0"}], "title": "test",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [entry]}}]}
    out = io.BytesIO()
    with c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain, key, None)) as signer, c2pa.Builder(manifest) as builder:
        builder.sign(signer, mime, io.BytesIO(image), out)
    return out.getvalue()


def xmp_packet(source_uri: str | None = None, form: str = "attribute", creator_tool: str | None = None, extra: str = "") -> bytes:
    """An XMP packet stating DigitalSourceType in one of the three ways XMP writes a property."""
    props, body = [], []
    if source_uri is not None and form == "attribute":
        props.append(f'Iptc4xmpExt:DigitalSourceType="{source_uri}"')
    elif source_uri is not None and form == "element":
        body.append(f"<Iptc4xmpExt:DigitalSourceType>{source_uri}</Iptc4xmpExt:DigitalSourceType>")
    elif source_uri is not None:
        body.append(f'<Iptc4xmpExt:DigitalSourceType rdf:resource="{source_uri}"/>')
    if creator_tool is not None:
        props.append(f'xmp:CreatorTool="{creator_tool}"')
    return (f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
            f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" {" ".join(props)}>{"".join(body)}{extra}</rdf:Description>'
            f'</rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>').encode()


def picture(size: tuple[int, int] = (320, 280), seed: int = 0) -> Image.Image:
    from tests.images import scene

    return scene(*size, seed=seed)


def save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def with_xmp(fmt: str, packet: bytes, seed: int = 0) -> bytes:
    """A JPEG, PNG (iTXt XML:com.adobe.xmp), WebP or TIFF (tag 700) carrying `packet`."""
    image = picture(seed=seed)
    if fmt == "PNG":
        info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", packet.decode())
        return save(image, "PNG", pnginfo=info)
    if fmt == "TIFF":
        return save(image, "TIFF", tiffinfo={700: packet})
    return save(image, fmt, xmp=packet)


def png_with_text(items: list[tuple[str, str]], compressed: bool = False, seed: int = 0) -> bytes:
    info = PngInfo()
    for key, value in items:
        if compressed:
            info.add_text(key, value, zip=True)
        else:
            info.add_text(key, value)
    return save(picture(seed=seed), "PNG", pnginfo=info)


def with_exif(fmt: str, fields: dict[int, str], user_comment: str | None = None, seed: int = 0) -> bytes:
    """IFD0 text fields and, as A1111 writes it, an Exif-IFD UserComment in big-endian UTF-16."""
    image = picture(seed=seed)
    exif = image.getexif()
    for tag, value in fields.items():
        exif[tag] = value
    if user_comment is not None:
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + user_comment.encode("utf-16-be")
    return save(image, fmt, exif=exif.tobytes())


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_insert(png: bytes, chunks: list[bytes]) -> bytes:
    """`chunks` (already framed) right after IHDR."""
    at = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:at] + b"".join(chunks) + png[at:]


def jpeg_insert(jpeg: bytes, segments: list[bytes]) -> bytes:
    """Marker segments (already framed) right after SOI."""
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def tiff_ifd_loop() -> bytes:
    """A little-endian TIFF header whose IFD0 points at an Exif IFD that points back at itself."""
    entries = struct.pack("<HHII", 0x8769, 4, 1, 8)  # Exif IFD pointer -> offset 8 (IFD0 again)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entries + b"\x00\x00\x00\x00"


def _png(*chunks: bytes) -> bytes:
    return png_insert(save(picture(), "PNG"), list(chunks))


HOSTILE: dict[str, tuple[Callable[[], bytes], str | None]] = {  # case: (file, what its error says)
    "XMP of 2 MiB in PNG": (lambda: with_xmp("PNG", xmp_packet(IPTC + "trainedAlgorithmicMedia", extra="<x>" + "A" * (2 << 20) + "</x>")), "over 1 MiB; not read"),
    "XMP of 2 MiB in WebP": (lambda: with_xmp("WEBP", xmp_packet(IPTC + "trainedAlgorithmicMedia", extra="<x>" + "A" * (2 << 20) + "</x>")), "XMP over 1 MiB"),
    "extended XMP past 1 MiB": (lambda: jpeg_insert(save(picture(), "JPEG"), [jpeg_segment(
        0xE1, b"http://ns.adobe.com/xmp/extension/\x00" + b"0" * 40 + b"B" * 65000)] * 20), "extended XMP over 1 MiB"),
    "entity bomb in XMP": (lambda: with_xmp("JPEG", b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
                                            + xmp_packet(IPTC + "trainedAlgorithmicMedia")[:-30]), None),
    "broken JUMBF in APP11": (lambda: jpeg_insert(save(picture(), "JPEG"), [jpeg_segment(0xEB, b"JP\x02\x11" + b"\xff" * 500)]),
                              "manifest store"),
    "garbage caBX chunk": (lambda: _png(png_chunk(b"caBX", b"\x00\x00\x00\x10jumb" + b"\x07" * 300)), "c2pa:"),
    "manifest store over 16 MiB": (lambda: jpeg_insert(save(picture(), "JPEG"), [jpeg_segment(0xEB, b"JP" + b"\0" * 65000)] * 260),
                                   "over 16 MiB"),
    "zTXt inflating to 256 MiB": (lambda: _png(png_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(b"\0" * (256 << 20), 9))),
                                  "inflates past 1 MiB"),
    "iTXt inflating to 256 MiB": (lambda: _png(png_chunk(b"iTXt", b"prompt\x00\x01\x00\x00\x00" + zlib.compress(b"\0" * (256 << 20), 9))),
                                  "inflates past 1 MiB"),
    "zTXt that does not inflate": (lambda: _png(png_chunk(b"zTXt", b"prompt\x00\x00" + b"\x78\x9c garbage")), "does not inflate"),
    "20,000 text chunks": (lambda: _png(*[png_chunk(b"tEXt", b"k\x00" + str(i).encode()) for i in range(20_000)]), "more than 64 text chunks"),
    "150,000 empty chunks": (lambda: _png(*[png_chunk(b"abCd", b"")] * 150_000), "more than 100000 PNG chunks"),
    "text chunk without a keyword": (lambda: _png(png_chunk(b"tEXt", b"no separator")), "no valid keyword"),
    "EXIF IFD pointing outside": (lambda: jpeg_insert(save(picture(), "JPEG"), [jpeg_segment(
        0xE1, b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x31\x01\x02\x00\x00\x01\x00\x00\xff\xff\x00\x00\x00\x00\x00\x00")]),
        "points outside"),
    "EXIF IFD loop": (lambda: jpeg_insert(save(picture(), "JPEG"), [jpeg_segment(0xE1, b"Exif\x00\x00" + tiff_ifd_loop())]), None),
    "EXIF IFD with 60,000 entries": (lambda: jpeg_insert(save(picture(), "JPEG"), [jpeg_segment(
        0xE1, b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x60\xea" + b"\0" * 60000)]), "60000 entries"),
    "invalid UTF-8 in text": (lambda: _png(png_chunk(b"iTXt", b"Software\x00\x00\x00\x00\x00NovelAI\xff\xfe\xed\xa0\x80")), None),
}
