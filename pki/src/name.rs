//! Distinguished names: the subject templates of profiles and reading attributes back.

use const_oid::ObjectIdentifier;
use const_oid::db::rfc4519;
use der::asn1::{Any, PrintableStringRef, SetOfVec, Utf8StringRef};
use der::{Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

/// A subject attribute a profile may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectAttr {
    /// `C`, country (PrintableString, two letters).
    Country,
    /// `ST`, state or province.
    State,
    /// `L`, locality.
    Locality,
    /// `O`, organisation.
    Organization,
    /// `OU`, organisational unit.
    OrganizationalUnit,
    /// `CN`, common name.
    CommonName,
    /// `serialNumber` (X.520, PrintableString): the terminal serial.
    SerialNumber,
}

impl SubjectAttr {
    /// From the short name used in policy files.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "C" => Self::Country,
            "ST" => Self::State,
            "L" => Self::Locality,
            "O" => Self::Organization,
            "OU" => Self::OrganizationalUnit,
            "CN" => Self::CommonName,
            "serialNumber" => Self::SerialNumber,
            _ => return None,
        })
    }

    /// The attribute type OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::Country => rfc4519::C,
            Self::State => rfc4519::ST,
            Self::Locality => rfc4519::L,
            Self::Organization => rfc4519::O,
            Self::OrganizationalUnit => rfc4519::OU,
            Self::CommonName => rfc4519::CN,
            Self::SerialNumber => rfc4519::SERIAL_NUMBER,
        }
    }

    /// X.520 says `C` and `serialNumber` are PrintableString; RFC 5280 wants UTF8String for the rest.
    fn printable(self) -> bool {
        matches!(self, Self::Country | Self::SerialNumber)
    }
}

/// Values substituted into a subject template (`{serial}`, `{class}`, `{manufacturer}`, `{model}`,
/// `{name}`) and into CRL distribution point URLs (`{partition}`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectVars {
    /// `{serial}`: the terminal serial.
    pub serial: Option<String>,
    /// `{class}`: the terminal class, I/II/III.
    pub class: Option<String>,
    /// `{manufacturer}`: the manufacturer code.
    pub manufacturer: Option<String>,
    /// `{model}`: the model code.
    pub model: Option<String>,
    /// `{name}`: a principal's or CA's name.
    pub name: Option<String>,
    /// `{partition}` in CRL distribution point URLs: the CRL partition the certificate's
    /// revocation will be listed in (fixed at issuance, so the mapping never changes).
    pub crl_partition: Option<u32>,
}

const PLACEHOLDERS: [&str; 5] = ["serial", "class", "manufacturer", "model", "name"];

impl SubjectVars {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "serial" => self.serial.as_deref(),
            "class" => self.class.as_deref(),
            "manufacturer" => self.manufacturer.as_deref(),
            "model" => self.model.as_deref(),
            "name" => self.name.as_deref(),
            _ => None,
        }
    }
}

/// Why a subject could not be made from a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The template uses a placeholder the caller did not supply.
    #[error("subject template needs `{{{0}}}`, which this request does not supply")]
    MissingVar(String),
    /// A value is empty, too long, or not allowed in its string type.
    #[error("subject attribute {attr:?} value {value:?} is not allowed: {why}")]
    BadValue {
        /// The attribute.
        attr: SubjectAttr,
        /// The rendered value.
        value: String,
        /// Why.
        why: &'static str,
    },
}

/// A profile's subject: attributes in order, each with a value that may hold placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate(Vec<(SubjectAttr, String)>);

impl SubjectTemplate {
    /// Wraps checked attributes.
    pub fn new(attrs: Vec<(SubjectAttr, String)>) -> Self {
        Self(attrs)
    }

    /// The attributes.
    pub fn attrs(&self) -> &[(SubjectAttr, String)] {
        &self.0
    }

    /// Checks a template value at policy load: placeholders known and braces balanced.
    pub fn check_value(attr: SubjectAttr, value: &str) -> Result<(), String> {
        let mut rest = value;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').ok_or("unclosed `{` in subject value")?;
            let key = &rest[open + 1..open + close];
            if !PLACEHOLDERS.contains(&key) {
                return Err(format!("unknown placeholder `{{{key}}}` (known: {})", PLACEHOLDERS.join(", ")));
            }
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err("stray `}` in subject value".into());
        }
        if value.is_empty() {
            return Err("subject value must not be empty".into());
        }
        if attr == SubjectAttr::Country
            && !value.contains('{')
            && !(value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err("C must be a two-letter country code".into());
        }
        Ok(())
    }

    /// Renders the template into a DER-ready name.
    pub fn render(&self, vars: &SubjectVars) -> Result<Name, NameError> {
        let mut rdns = RdnSequence::default();
        for (attr, template) in &self.0 {
            let value = substitute(template, vars)?;
            rdns.push(single_rdn(*attr, &value)?);
        }
        Ok(Name::hazmat_from_rdn_sequence(rdns))
    }
}

fn substitute(template: &str, vars: &SubjectVars) -> Result<String, NameError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let key = &rest[open + 1..close];
        out.push_str(vars.get(key).ok_or_else(|| NameError::MissingVar(key.to_owned()))?);
        rest = rest.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}

fn single_rdn(attr: SubjectAttr, value: &str) -> Result<RelativeDistinguishedName, NameError> {
    let bad = |why| NameError::BadValue { attr, value: value.to_owned(), why };
    // X.520 upper bounds: 64 characters for most attributes (ub-common-name etc.).
    if value.is_empty() || value.chars().count() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    let any = if attr.printable() {
        let s = PrintableStringRef::new(value).map_err(|_| bad("not a PrintableString"))?;
        Any::encode_from(&s).map_err(|_| bad("does not encode"))?
    } else {
        let s = Utf8StringRef::new(value).map_err(|_| bad("not UTF-8"))?;
        Any::encode_from(&s).map_err(|_| bad("does not encode"))?
    };
    let atv = AttributeTypeAndValue { oid: attr.oid(), value: any };
    let set = SetOfVec::try_from(vec![atv]).map_err(|_| bad("does not encode"))?;
    RelativeDistinguishedName::try_from(set.into_vec()).map_err(|_| bad("does not encode"))
}

/// The text of every attribute of type `oid` in `name`, in order (any directory string type).
pub fn attribute_values(name: &Name, oid: ObjectIdentifier) -> Vec<String> {
    name.iter().filter(|atv| atv.oid == oid).filter_map(|atv| any_string(&atv.value)).collect()
}

fn any_string(value: &Any) -> Option<String> {
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
            std::str::from_utf8(value.value()).ok().map(str::to_owned)
        }
        _ => None,
    }
}
