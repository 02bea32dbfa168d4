"""Words a question is made of but that say nothing about which passage answers it.

Left out of the lexical query: in an any-word (OR) search, "who", "is", "der", "die" match
most passages, and their summed weight can bury the one passage holding the rare name or code
the visitor typed. English and German function words (the languages the platform is
evaluated in), plus the commonest French and Spanish ones; a question made only of these
words is searched as it is.
"""

from __future__ import annotations

STOP_WORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing don done down during each
    few for from further had has have having he her here hers herself him himself his how i
    if in into is it its itself just me more most my myself no nor not now of off on once
    only or other our ours ourselves out over own please same she should so some such than
    that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves s t

    aber alle allem allen aller alles als also am an andere anderen anderes auch auf aus
    bei bin bis bist da damit dann das dass daß dein deine deinem deinen deiner dem den
    denn der des dessen dich die dies diese diesem diesen dieser dieses dir doch dort du
    durch ein eine einem einen einer eines er es etwas euch euer eure für gegen gibt hab
    habe haben hat hatte hatten hier ich ihm ihn ihnen ihr ihre ihrem ihren ihrer im in
    ins ist jede jedem jeden jeder jedes kann kein keine man mein meine mich mir mit muss
    nach nicht nichts noch nun nur ob oder ohne sehr sein seine seinem seinen seiner sich
    sie sind so soll sollte über um und uns unser unter vom von vor war waren was weil
    welche welchem welchen welcher welches wenn wer werden wie wieder wir wird wo wurde
    wurden würde zu zum zur

    au aux avec ce ces cette dans de des du elle en est et il ils je la le les leur lui
    mais me même mes moi mon ne nous on ou par pas pour qu que quel quelle qui sa se ses
    son sur ta te tes toi ton tu un une vous

    al como con cual cuál cuando cómo del el ella ellos en es esta este esto la las lo los
    me mi más no nos o para pero por qué que se si sin su sus un una uno y ya
    """.split()
)
