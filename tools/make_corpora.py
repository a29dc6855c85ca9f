"""Generate the shipped text corpora (original sentences from hand-written templates and vocabularies).

    python tools/make_corpora.py    # rewrites lora_whisper/corpora/*.txt

Each corpus has a fixed held-out split: lines after the '# test' marker. The generator is seeded, so the files are
reproducible; they are committed so that nobody needs to run this.
"""

import itertools
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "lora_whisper" / "corpora"

FR_MEDICAL = {
    "templates": [
        "Le patient présente {symptome} depuis {duree}.",
        "La patiente rapporte {symptome} depuis {duree}.",
        "On prescrit {medicament} {posologie} pendant {duree}.",
        "Le bilan sanguin montre {resultat}.",
        "L'examen clinique révèle {signe}.",
        "Nous demandons {examen} pour confirmer {diagnostic}.",
        "Le diagnostic retenu est {diagnostic}.",
        "Il faut surveiller {parametre} toutes les {intervalle}.",
        "Le traitement par {medicament} est arrêté en raison de {effet}.",
        "{examen} ne montre pas de {lesion}.",
        "La tension artérielle est de {tension} ce matin.",
        "Antécédents de {antecedent} et de {antecedent2}.",
        "Le patient est allergique à {allergene}.",
        "Une consultation de {specialite} est programmée {quand}.",
        "Le patient sort de l'hôpital avec {medicament} {posologie}.",
        "On note {signe} à l'auscultation.",
        "Contrôle {examen} dans {duree}.",
        "La douleur est cotée à {score} sur dix.",
    ],
    "symptome": [
        "une toux sèche",
        "une fièvre persistante",
        "des douleurs thoraciques",
        "une dyspnée d'effort",
        "des céphalées intenses",
        "des nausées",
        "une fatigue chronique",
        "des vertiges",
        "des palpitations",
        "une douleur abdominale",
        "des douleurs lombaires",
        "une perte de poids",
    ],
    "duree": [
        "trois jours",
        "une semaine",
        "deux semaines",
        "un mois",
        "quarante-huit heures",
        "six mois",
        "dix jours",
    ],
    "medicament": [
        "l'amoxicilline",
        "le paracétamol",
        "l'ibuprofène",
        "la metformine",
        "l'héparine",
        "le furosémide",
        "l'oméprazole",
        "la prednisolone",
        "le ramipril",
        "l'amlodipine",
        "la morphine",
        "le salbutamol",
    ],
    "posologie": [
        "matin et soir",
        "trois fois par jour",
        "une fois par jour",
        "à la demande",
        "au coucher",
        "toutes les six heures",
    ],
    "resultat": [
        "une anémie modérée",
        "une hyperglycémie",
        "une insuffisance rénale",
        "une hypokaliémie",
        "un syndrome inflammatoire",
        "des transaminases élevées",
        "une thrombopénie",
        "une hyponatrémie",
    ],
    "signe": [
        "un souffle cardiaque",
        "des crépitants aux deux bases",
        "un œdème des membres inférieurs",
        "une hépatomégalie",
        "une raideur de la nuque",
        "une adénopathie cervicale",
        "un érythème cutané",
    ],
    "examen": [
        "une radiographie thoracique",
        "un scanner abdominal",
        "une échographie cardiaque",
        "une IRM cérébrale",
        "un électrocardiogramme",
        "une prise de sang",
        "une fibroscopie",
        "une biopsie",
    ],
    "diagnostic": [
        "une pneumopathie",
        "une embolie pulmonaire",
        "une insuffisance cardiaque",
        "un diabète de type deux",
        "une appendicite",
        "une pyélonéphrite",
        "une méningite",
        "une cholécystite",
        "un infarctus",
    ],
    "parametre": [
        "la glycémie",
        "la température",
        "la diurèse",
        "la saturation en oxygène",
        "la fréquence cardiaque",
        "la kaliémie",
    ],
    "intervalle": ["quatre heures", "six heures", "huit heures", "douze heures"],
    "effet": [
        "une éruption cutanée",
        "des troubles digestifs",
        "une hypotension",
        "une insuffisance rénale aiguë",
        "des vertiges",
    ],
    "lesion": ["lésion suspecte", "fracture", "épanchement", "masse tumorale", "calcification"],
    "tension": [
        "cent quarante sur quatre-vingt-dix",
        "cent vingt sur quatre-vingts",
        "quatre-vingt-dix sur soixante",
        "cent soixante sur cent",
    ],
    "antecedent": ["diabète", "hypertension artérielle", "asthme", "tabagisme", "insuffisance rénale", "épilepsie"],
    "antecedent2": ["dyslipidémie", "fibrillation auriculaire", "obésité", "cancer du côlon", "hypothyroïdie"],
    "allergene": ["la pénicilline", "l'aspirine", "l'iode", "le latex", "la codéine"],
    "specialite": ["cardiologie", "pneumologie", "neurologie", "néphrologie", "gastro-entérologie", "dermatologie"],
    "quand": ["la semaine prochaine", "dans un mois", "demain matin", "lundi", "dans trois mois"],
    "score": ["trois", "cinq", "sept", "huit", "deux"],
}

DE_LEGAL = {
    "templates": [
        "Der Kläger verlangt {anspruch} wegen {grund}.",
        "Die Beklagte bestreitet {bestreiten}.",
        "Das Gericht weist die Klage als {urteil} ab.",
        "Der Vertrag wurde am {datum} geschlossen.",
        "Die Frist für {frist} beträgt {dauer}.",
        "Gegen das Urteil kann innerhalb von {dauer} {rechtsmittel} eingelegt werden.",
        "Der Mieter hat {pflicht} verletzt.",
        "Die Kosten des Verfahrens trägt {partei}.",
        "Nach Paragraph {paragraf} des {gesetz} ist {folge}.",
        "Der Zeuge bestätigt {aussage}.",
        "Die Parteien schließen {vergleich} über {betrag}.",
        "Das Amtsgericht {ort} ist örtlich zuständig.",
        "Der Anwalt beantragt {antrag}.",
        "Die Kündigung ist wegen {grund} unwirksam.",
        "Der Schuldner befindet sich seit {datum} im Verzug.",
        "Die Berufung wird als {urteil} zurückgewiesen.",
        "Der Richter vertagt die Verhandlung auf den {datum}.",
        "Die Beklagte wird verurteilt, an den Kläger {betrag} zu zahlen.",
        "Der Sachverständige stellt {aussage} fest.",
        "Das Landgericht {ort} hebt das Urteil wegen {grund} auf.",
        "Die Staatsanwaltschaft erhebt Anklage wegen {delikt}.",
        "Der Angeklagte wird wegen {delikt} zu {strafe} verurteilt.",
        "Die Verteidigung beantragt {antrag}.",
    ],
    "delikt": ["Betrugs", "Diebstahls", "Untreue", "Körperverletzung", "Urkundenfälschung", "Steuerhinterziehung"],
    "strafe": ["einer Geldstrafe", "einer Freiheitsstrafe auf Bewährung", "zwei Jahren Haft", "neunzig Tagessätzen"],
    "anspruch": [
        "Schadensersatz",
        "Schmerzensgeld",
        "die Rückzahlung des Kaufpreises",
        "Unterlassung",
        "die Herausgabe der Wohnung",
        "Lohnfortzahlung",
        "eine Vertragsstrafe",
    ],
    "grund": [
        "eines Mangels der Mietsache",
        "einer fristlosen Kündigung",
        "Verzugs",
        "einer Pflichtverletzung",
        "eines Verkehrsunfalls",
        "arglistiger Täuschung",
        "fehlender Zustimmung des Betriebsrats",
    ],
    "bestreiten": [
        "den Zugang der Kündigung",
        "die Höhe der Forderung",
        "jegliches Verschulden",
        "die Wirksamkeit des Vertrages",
        "den Eintritt eines Schadens",
    ],
    "urteil": ["unbegründet", "unzulässig", "verspätet", "offensichtlich unbegründet"],
    "datum": [
        "ersten März",
        "zwölften Juni",
        "dritten Oktober",
        "fünfzehnten Januar",
        "dreißigsten April",
        "zweiten Dezember",
    ],
    "frist": ["die Klageerwiderung", "den Widerspruch", "die Berufungsbegründung", "die Stellungnahme", "die Zahlung"],
    "dauer": ["zwei Wochen", "einem Monat", "vier Wochen", "drei Monaten", "zehn Tagen"],
    "rechtsmittel": ["Berufung", "Revision", "sofortige Beschwerde", "Einspruch"],
    "pflicht": ["seine Anzeigepflicht", "die Hausordnung", "seine Zahlungspflicht", "die Obhutspflicht"],
    "partei": ["die Beklagte", "der Kläger", "die Staatskasse", "jede Partei zur Hälfte"],
    "paragraf": [
        "zweihundertachtzig",
        "fünfhundertdreiundvierzig",
        "achthundertdreiundzwanzig",
        "hundertdreiunddreißig",
        "sechshundertsechsundzwanzig",
    ],
    "gesetz": ["Bürgerlichen Gesetzbuches", "Handelsgesetzbuches", "Strafgesetzbuches", "Kündigungsschutzgesetzes"],
    "folge": [
        "der Anspruch verjährt",
        "die Kündigung wirksam",
        "der Vertrag nichtig",
        "Schadensersatz zu leisten",
        "die Forderung fällig",
    ],
    "aussage": [
        "den Ablauf des Unfalls",
        "die Übergabe der Schlüssel",
        "den Inhalt des Gesprächs",
        "die Zahlung in bar",
    ],
    "vergleich": ["einen Vergleich", "eine Einigung", "einen außergerichtlichen Vergleich"],
    "betrag": ["fünftausend Euro", "zwölftausend Euro", "achthundert Euro", "dreißigtausend Euro"],
    "ort": ["Hamburg", "München", "Köln", "Leipzig", "Stuttgart", "Bremen"],
    "antrag": [
        "die Aussetzung des Verfahrens",
        "Prozesskostenhilfe",
        "die Vernehmung des Zeugen",
        "ein Sachverständigengutachten",
        "die Verlegung des Termins",
    ],
}

ES_FINANCE = {
    "templates": [
        "El banco central mantiene el tipo de interés en {porcentaje}.",
        "La empresa registró {resultado} de {cantidad} en el {periodo}.",
        "Los inversores venden {activo} ante {riesgo}.",
        "La inflación subió al {porcentaje} en {mes}.",
        "El índice bursátil cerró la sesión con {movimiento}.",
        "La deuda pública alcanza {cantidad}.",
        "El fondo invierte principalmente en {activo}.",
        "La agencia rebaja la calificación de {entidad} por {riesgo}.",
        "Los dividendos se pagarán en {mes}.",
        "El préstamo hipotecario tiene un diferencial de {porcentaje}.",
        "La auditoría detectó {problema} en las cuentas de {entidad}.",
        "El tipo de cambio del euro frente al dólar {movimiento2}.",
        "La cartera tiene una rentabilidad anual del {porcentaje}.",
        "El consejo aprobó {operacion} por valor de {cantidad}.",
        "La liquidez de {entidad} mejora tras {operacion}.",
        "El margen bruto cayó en el {periodo} por {riesgo}.",
        "Los analistas esperan {resultado} de {cantidad} para el {periodo}.",
        "La prima de riesgo se sitúa en {puntos} puntos básicos.",
        "{entidad} refinancia su deuda con {operacion}.",
        "El regulador investiga {problema} en {entidad}.",
    ],
    "puntos": ["ochenta", "cien", "ciento veinte", "noventa y cinco", "setenta"],
    "porcentaje": [
        "dos por ciento",
        "tres coma cinco por ciento",
        "cuatro por ciento",
        "uno coma dos por ciento",
        "cero coma cinco por ciento",
        "seis por ciento",
    ],
    "resultado": ["un beneficio neto", "unas pérdidas", "un flujo de caja", "unos ingresos"],
    "cantidad": [
        "tres millones de euros",
        "quinientos mil euros",
        "dos mil millones de euros",
        "ochenta millones de dólares",
        "doce millones de euros",
    ],
    "periodo": ["primer trimestre", "segundo trimestre", "ejercicio fiscal", "último semestre", "tercer trimestre"],
    "activo": [
        "bonos del Estado",
        "acciones tecnológicas",
        "materias primas",
        "renta fija",
        "letras del Tesoro",
        "fondos indexados",
        "derivados",
    ],
    "riesgo": [
        "la volatilidad del mercado",
        "la subida de los tipos",
        "el riesgo de impago",
        "la incertidumbre política",
        "la caída de la demanda",
        "la presión inflacionaria",
    ],
    "mes": ["enero", "marzo", "mayo", "julio", "septiembre", "noviembre"],
    "movimiento": [
        "una caída del dos por ciento",
        "una subida moderada",
        "pérdidas generalizadas",
        "ganancias en el sector bancario",
    ],
    "movimiento2": [
        "se mantiene estable",
        "se deprecia ligeramente",
        "sube por tercera semana",
        "marca un mínimo anual",
    ],
    "entidad": [
        "la aseguradora",
        "la entidad financiera",
        "la compañía eléctrica",
        "el grupo inmobiliario",
        "la cooperativa de crédito",
    ],
    "problema": [
        "irregularidades contables",
        "un desfase de tesorería",
        "provisiones insuficientes",
        "gastos no justificados",
    ],
    "operacion": [
        "una ampliación de capital",
        "la emisión de bonos",
        "la venta de activos",
        "una recompra de acciones",
        "la fusión con su competidor",
    ],
}


# Out-of-template held-out sets: templates AND domain vocabulary never used by the training templates above, so
# the held-out figure measures generalisation, not recall of the training phrasing (issue 9).
FR_MEDICAL_OUT = {
    "templates": [
        "Madame {nom} consulte pour {plainte} apparue {debut}.",
        "À l'auscultation on entend {bruit} à la base {cote}.",
        "Nous introduisons {molecule} à raison de {dose}.",
        "Le scanner thoracique met en évidence {anomalie}.",
        "Devant {plainte}, une hospitalisation en {service} est décidée.",
        "L'infirmière signale {plainte} chez le voisin de chambre.",
        "Le taux de {marqueur} reste élevé malgré {molecule}.",
        "Monsieur {nom} a été opéré d'{chirurgie} il y a {delai}.",
        "La kinésithérapie respiratoire sera poursuivie {frequence}.",
        "Nous avons revu le dossier avec le docteur {nom} du service de {service}.",
    ],
    "nom": ["Lefebvre", "Moreau", "Garnier", "Rousseau", "Fontaine", "Chevalier", "Mercier"],
    "plainte": [
        "des vertiges rotatoires",
        "une toux productive",
        "des palpitations nocturnes",
        "un œdème des chevilles",
        "des crampes abdominales",
        "une perte de poids inexpliquée",
        "des sueurs profuses",
    ],
    "debut": ["brutalement hier soir", "progressivement depuis l'automne", "au réveil", "après un repas copieux"],
    "bruit": ["des râles bronchiques", "un frottement pleural", "des sibilants", "un silence auscultatoire"],
    "cote": ["droite", "gauche"],
    "molecule": [
        "la ceftriaxone",
        "le bisoprolol",
        "l'apixaban",
        "la lévothyroxine",
        "le tramadol",
        "la spironolactone",
    ],
    "dose": [
        "un gramme par jour",
        "deux comprimés le soir",
        "cinq milligrammes matin et soir",
        "une injection hebdomadaire",
    ],
    "anomalie": [
        "un nodule spiculé",
        "une condensation lobaire",
        "un pneumothorax partiel",
        "des adénopathies médiastinales",
        "une dilatation des bronches",
    ],
    "service": ["réanimation", "soins palliatifs", "gériatrie", "chirurgie viscérale", "rhumatologie"],
    "marqueur": ["la troponine", "la ferritine", "la procalcitonine", "l'hémoglobine glyquée", "la bilirubine"],
    "chirurgie": ["une cholécystectomie", "une appendicectomie", "une prothèse de hanche", "un pontage coronarien"],
    "delai": ["deux ans", "quinze jours", "une dizaine d'années", "trois semaines"],
    "frequence": ["deux fois par semaine", "quotidiennement", "jusqu'à la sortie", "pendant le séjour"],
}

DE_LEGAL_OUT = {
    "templates": [
        "Die Mieterin verlangt {forderung} wegen {mangel}.",
        "Das Amtsgericht {stadt} hat den Termin auf {zeit} verlegt.",
        "Der Notar beurkundet {geschaeft} in Anwesenheit beider Erben.",
        "Gegen den Bescheid legt die Firma {firma} fristgerecht {mittel} ein.",
        "Die Zeugin konnte {wahrnehmung} nicht mit Sicherheit bestätigen.",
        "Im Grundbuch ist {eintrag} zugunsten der Sparkasse eingetragen.",
        "Der Arbeitgeber stützt die Abmahnung auf {verstoss}.",
        "Die Verjährung beginnt mit dem Schluss des Jahres, in dem {ereignis}.",
    ],
    "forderung": [
        "eine Mietminderung",
        "eine Entschädigung",
        "die Rückzahlung der Kaution",
        "eine Nebenkostenabrechnung",
    ],
    "mangel": ["Schimmel im Badezimmer", "eines defekten Aufzugs", "Lärm von der Baustelle", "einer undichten Heizung"],
    "stadt": ["Dresden", "Hannover", "Nürnberg", "Kassel", "Freiburg"],
    "zeit": ["den dritten Dezember", "nächsten Dienstag", "Anfang Februar", "den Vormittag"],
    "geschaeft": ["den Grundstückskaufvertrag", "die Schenkung", "das gemeinschaftliche Testament", "den Ehevertrag"],
    "firma": ["Berger", "Lindner", "Hoffmann", "Krüger"],
    "mittel": ["Klage vor dem Verwaltungsgericht", "eine Dienstaufsichtsbeschwerde", "Widerspruch beim Finanzamt"],
    "wahrnehmung": [
        "das Kennzeichen",
        "die Uhrzeit des Unfalls",
        "die Farbe des Fahrzeugs",
        "den Wortlaut des Gesprächs",
    ],
    "eintrag": ["eine Grundschuld", "ein Wegerecht", "ein Nießbrauch", "eine Auflassungsvormerkung"],
    "verstoss": [
        "wiederholte Verspätungen",
        "unerlaubte Nebentätigkeit",
        "private Internetnutzung",
        "Arbeitszeitbetrug",
    ],
    "ereignis": ["der Anspruch entstanden ist", "der Gläubiger davon erfahren hat", "die Leistung fällig wurde"],
}

ES_FINANCE_OUT = {
    "templates": [
        "La aseguradora {aseguradora} ha recomprado {acciones} propias este {plazo}.",
        "El déficit comercial se amplió hasta {cifra} en {mes_out}.",
        "Los analistas de {banco} rebajan la recomendación a {recomendacion}.",
        "La prima de riesgo cerró en {puntos_out} puntos básicos.",
        "El fondo de pensiones reduce su exposición a {sector}.",
        "La opa sobre {aseguradora} se aprobará si acepta {umbral} del capital.",
        "Hacienda recaudó {cifra} por el impuesto de sociedades durante {plazo}.",
        "El consejo propone un dividendo complementario de {dividendo} por título.",
    ],
    "aseguradora": ["Mapfre", "Catalana Occidente", "Línea Directa", "Mutua Madrileña"],
    "acciones": ["dos millones de títulos", "el tres por ciento", "medio millón de acciones"],
    "plazo": ["verano", "cuatrimestre", "bienio", "otoño"],
    "cifra": ["catorce mil millones de euros", "seiscientos millones", "dos mil trescientos millones de euros"],
    "mes_out": ["febrero", "abril", "junio", "agosto", "octubre", "diciembre"],
    "banco": ["Barclays", "Morgan Stanley", "Goldman Sachs", "Deutsche Bank"],
    "recomendacion": ["infraponderar", "mantener", "vender", "neutral"],
    "puntos_out": ["ciento treinta y dos", "sesenta y ocho", "doscientos once", "cuarenta y cuatro"],
    "sector": ["las eléctricas", "las inmobiliarias", "los bonos corporativos", "las materias primas"],
    "umbral": ["la mitad", "dos tercios", "el setenta y cinco por ciento"],
    "dividendo": ["treinta céntimos", "un euro con diez", "cuarenta y cinco céntimos"],
}


def generate(spec: dict, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    templates = spec["templates"]
    for _ in itertools.count():
        t = rng.choice(templates)
        fields = {k: rng.choice(v) for k, v in spec.items() if k != "templates"}
        s = t.format(**fields)
        s = s[0].upper() + s[1:]
        out.add(s)
        if len(out) >= n or _ > n * 50:
            break
    lines = sorted(out)
    rng.shuffle(lines)
    return lines


def check_disjoint(name: str, spec: dict, out_spec: dict) -> None:
    """No vocabulary entry of the out-of-template set appears in the training templates or vocabulary."""
    train_text = " ".join(spec["templates"] + [v for k, vs in spec.items() if k != "templates" for v in vs]).lower()
    shared = [v for k, vs in out_spec.items() if k != "templates" for v in vs if v.lower() in train_text]
    if shared:
        raise SystemExit(f"{name}: out-of-template vocabulary also in training: {shared}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, spec, out_spec, lang in (
        ("fr-medical", FR_MEDICAL, FR_MEDICAL_OUT, "fr"),
        ("de-legal", DE_LEGAL, DE_LEGAL_OUT, "de"),
        ("es-finance", ES_FINANCE, ES_FINANCE_OUT, "es"),
    ):
        lines = generate(spec, 420, seed=len(name))
        train, test = lines[:-80], lines[-80:]
        test_out = generate(out_spec, 80, seed=len(name) + 1)
        check_disjoint(name, spec, out_spec)
        header = (
            f"# {name}: {lang}, {len(train)} train + {len(test)} test sentences (same templates) + {len(test_out)} "
            "out-of-template test sentences; lines after '# test' (in-template) and '# test-out' (other templates "
            "and vocabulary) are held out\n"
        )
        text = (
            header + "\n".join(train) + "\n# test\n" + "\n".join(test) + "\n# test-out\n" + "\n".join(test_out) + "\n"
        )
        (OUT / f"{name}.txt").write_text(text, encoding="utf-8")
        print(name, len(train), len(test), len(test_out))


if __name__ == "__main__":
    main()
